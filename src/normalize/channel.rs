//! Channel names → who is on that channel.
//!
//! Asterisk names channels `TECH/RESOURCE-SUFFIX` (`SIP/1001-0000000a`,
//! `PJSIP/my-trunk-0000001a`, `DAHDI/i2/5551234-770d`, `IAX2/peer-123`),
//! Local channels `Local/EXTEN@CONTEXT-SUFFIX;1` (`,1` on 1.4), and on
//! Asterisk ≤ 11 transient names appear during masquerades
//! (`SIP/pstn-…<MASQ>`, `Transfered/SIP/pstn-…<ZOMBIE>`).
//!
//! [`parse_channel`] splits a name; [`Classifier`] decides whether the
//! endpoint is an extension (a person's phone) or a trunk (the outside world),
//! from configurable patterns with a default that fits common dialplans:
//! an endpoint of 2–6 digits is an extension, anything else is a trunk, and a
//! channel created in a trunk context (`from-pstn`, `from-trunk`, `from-did`)
//! is a trunk.

use std::collections::HashMap;

use compact_str::CompactString;
use regex::Regex;

/// What a channel name says, before classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedChannel {
    /// A device channel: technology and endpoint (suffix removed).
    Device {
        /// `SIP`, `PJSIP`, `IAX2`, `DAHDI`, …
        tech: String,
        /// `1001`, `my-trunk`, `i2/5551234`, …
        endpoint: String,
    },
    /// A Local channel half: `Local/1001@from-queue-0000002a;1` → `1001`.
    Local {
        /// The extension part before `@`.
        exten: String,
        /// The context part after `@` (suffix removed).
        context: String,
    },
    /// Not a party: masquerade leftovers, `Transfered/…`, parking, snoop,
    /// announcer and other internal channels.
    Placeholder,
}

/// Who is on a channel, after classification. (Names are inline strings:
/// the normalizer holds two of these per live channel.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Party {
    /// A phone: the extension number.
    Extension(CompactString),
    /// The outside world (carrier, SIP trunk, DAHDI line): the endpoint.
    Trunk(CompactString),
    /// A Local channel; the extension it targets.
    Local(CompactString),
    /// An internal channel that is nobody.
    Placeholder,
}

impl Party {
    /// A person or the outside party (extension or trunk).
    pub fn is_party(&self) -> bool {
        matches!(self, Party::Extension(_) | Party::Trunk(_))
    }

    /// The extension, when this is one.
    pub fn extension(&self) -> Option<&str> {
        match self {
            Party::Extension(e) => Some(e),
            _ => None,
        }
    }
}

/// Technologies whose channels never represent a party.
const PLACEHOLDER_TECHS: &[&str] = &[
    "Parked",
    "Bridge",
    "Announcer",
    "Recorder",
    "CBAnn",
    "CBRec",
    "Snoop",
    "Multicast",
    "Message",
    "Surrogate",
    "AsyncGoto",
    "Transfered",
    "Transferred",
];

/// Splits a channel name (never panics, whatever the input).
pub fn parse_channel(name: &str) -> ParsedChannel {
    let name = name.trim();
    if name.ends_with("<MASQ>") || name.ends_with("<ZOMBIE>") {
        return ParsedChannel::Placeholder;
    }
    let Some((tech, rest)) = name.split_once('/') else {
        return ParsedChannel::Placeholder;
    };
    if tech.is_empty() || rest.is_empty() {
        return ParsedChannel::Placeholder;
    }
    if PLACEHOLDER_TECHS
        .iter()
        .any(|t| t.eq_ignore_ascii_case(tech))
    {
        return ParsedChannel::Placeholder;
    }
    if tech.eq_ignore_ascii_case("Local") {
        let rest = rest
            .strip_suffix(";1")
            .or_else(|| rest.strip_suffix(";2"))
            .or_else(|| rest.strip_suffix(",1"))
            .or_else(|| rest.strip_suffix(",2"))
            .unwrap_or(rest);
        let (exten, context) = rest.split_once('@').unwrap_or((rest, ""));
        let context = strip_suffix(context);
        // Queue interfaces look like `Local/1001@from-queue/n`.
        let context = context.split('/').next().unwrap_or(context);
        return ParsedChannel::Local {
            exten: exten.to_string(),
            context: context.to_string(),
        };
    }
    ParsedChannel::Device {
        tech: tech.to_string(),
        endpoint: strip_suffix(rest).to_string(),
    }
}

/// Removes the last `-SUFFIX` when it looks like a channel sequence number
/// (decimal digits, or at least 4 hex digits).
fn strip_suffix(s: &str) -> &str {
    match s.rsplit_once('-') {
        Some((head, tail))
            if !head.is_empty()
                && !tail.is_empty()
                && (tail.bytes().all(|b| b.is_ascii_digit())
                    || (tail.len() >= 4 && tail.bytes().all(|b| b.is_ascii_hexdigit()))) =>
        {
            head
        }
        _ => s,
    }
}

/// The extension named by a queue member interface (`SIP/1002`,
/// `PJSIP/1002`, `Local/1002@from-queue/n`), if it is one.
pub fn interface_extension(classifier: &Classifier, interface: &str) -> Option<String> {
    let (tech, rest) = interface.split_once('/')?;
    if tech.eq_ignore_ascii_case("Local") {
        let exten = rest.split('@').next()?;
        return classifier
            .is_extension_number(exten)
            .then(|| exten.to_string());
    }
    match classifier.classify_endpoint(interface, rest, None) {
        Party::Extension(e) => Some(e.into()),
        _ => None,
    }
}

/// Decides extension vs trunk. Built from [`ClassifierConfig`].
#[derive(Debug, Clone)]
pub struct Classifier {
    extension_pattern: Regex,
    extension_channels: Vec<Regex>,
    trunk_channels: Vec<Regex>,
    trunk_contexts: Vec<String>,
    endpoint_extensions: HashMap<String, String>,
}

/// Classification settings (the `classify:` config section).
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// An endpoint whose name matches is an extension (default `^[0-9]{2,6}$`).
    pub extension_pattern: String,
    /// Channel-name regexes that are always extensions.
    pub extension_channels: Vec<String>,
    /// Channel-name regexes that are always trunks.
    pub trunk_channels: Vec<String>,
    /// Contexts in which a new channel is a trunk.
    pub trunk_contexts: Vec<String>,
    /// Endpoint → extension, for endpoints not named after the extension.
    pub endpoint_extensions: HashMap<String, String>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            extension_pattern: "^[0-9]{2,6}$".into(),
            extension_channels: Vec::new(),
            trunk_channels: Vec::new(),
            trunk_contexts: vec!["from-pstn".into(), "from-trunk".into(), "from-did".into()],
            endpoint_extensions: HashMap::new(),
        }
    }
}

/// A classifier pattern did not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid pattern {pattern:?} in classify.{field}: {source}")]
pub struct PatternError {
    /// Which setting.
    pub field: &'static str,
    /// The pattern text.
    pub pattern: String,
    /// Why.
    #[source]
    pub source: regex::Error,
}

impl Classifier {
    /// Compiles the patterns; every bad pattern is reported.
    pub fn new(cfg: &ClassifierConfig) -> Result<Self, Vec<PatternError>> {
        let mut errors = Vec::new();
        let mut compile = |field: &'static str, p: &str| match Regex::new(p) {
            Ok(r) => Some(r),
            Err(source) => {
                errors.push(PatternError {
                    field,
                    pattern: p.to_string(),
                    source,
                });
                None
            }
        };
        let extension_pattern = compile("extension_pattern", &cfg.extension_pattern);
        let extension_channels: Vec<Regex> = cfg
            .extension_channels
            .iter()
            .filter_map(|p| compile("extension_channels", p))
            .collect();
        let trunk_channels: Vec<Regex> = cfg
            .trunk_channels
            .iter()
            .filter_map(|p| compile("trunk_channels", p))
            .collect();
        match extension_pattern {
            Some(extension_pattern) if errors.is_empty() => Ok(Self {
                extension_pattern,
                extension_channels,
                trunk_channels,
                trunk_contexts: cfg.trunk_contexts.clone(),
                endpoint_extensions: cfg.endpoint_extensions.clone(),
            }),
            _ => Err(errors),
        }
    }

    /// True when `number` looks like an extension number.
    pub fn is_extension_number(&self, number: &str) -> bool {
        self.extension_pattern.is_match(number)
    }

    /// Classifies a channel by name and the context it was created in.
    pub fn classify(&self, name: &str, context: Option<&str>) -> Party {
        match parse_channel(name) {
            ParsedChannel::Placeholder => Party::Placeholder,
            ParsedChannel::Local { exten, .. } => Party::Local(exten.into()),
            ParsedChannel::Device { tech, endpoint } => {
                self.classify_device(name, &tech, &endpoint, context)
            }
        }
    }

    fn classify_device(
        &self,
        name: &str,
        tech: &str,
        endpoint: &str,
        context: Option<&str>,
    ) -> Party {
        let explicit = self.endpoint_extensions.contains_key(endpoint)
            || self.extension_channels.iter().any(|r| r.is_match(name));
        // Telephony cards (DAHDI, Zap) carry lines from the carrier unless
        // the config says a channel is an analog extension.
        if !explicit && (tech.eq_ignore_ascii_case("DAHDI") || tech.eq_ignore_ascii_case("Zap")) {
            return Party::Trunk(endpoint.into());
        }
        self.classify_endpoint(name, endpoint, context)
    }

    fn classify_endpoint(&self, name: &str, endpoint: &str, context: Option<&str>) -> Party {
        if let Some(ext) = self.endpoint_extensions.get(endpoint) {
            return Party::Extension(ext.as_str().into());
        }
        if self.extension_channels.iter().any(|r| r.is_match(name)) {
            return Party::Extension(endpoint.into());
        }
        if self.trunk_channels.iter().any(|r| r.is_match(name)) {
            return Party::Trunk(endpoint.into());
        }
        if let Some(ctx) = context {
            if self.trunk_contexts.iter().any(|c| c == ctx) {
                return Party::Trunk(endpoint.into());
            }
        }
        if self.extension_pattern.is_match(endpoint) {
            Party::Extension(endpoint.into())
        } else {
            Party::Trunk(endpoint.into())
        }
    }
}

impl Default for Classifier {
    fn default() -> Self {
        // The default config's patterns are literals known to compile.
        match Classifier::new(&ClassifierConfig::default()) {
            Ok(c) => c,
            Err(_) => unreachable!("default classifier patterns compile"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_table() {
        let c = Classifier::default();
        let ext = |e: &str| Party::Extension(e.into());
        let trunk = |e: &str| Party::Trunk(e.into());
        let cases: &[(&str, Option<&str>, Party)] = &[
            ("SIP/1001-0000000a", None, ext("1001")),
            ("PJSIP/1001-00000012", None, ext("1001")),
            ("SIP/1001-0000abcd", None, ext("1001")),
            ("PJSIP/my-trunk-0000001a", None, trunk("my-trunk")),
            ("SIP/pstn-00000006", Some("from-pstn"), trunk("pstn")),
            ("SIP/pstn-00000006", None, trunk("pstn")),
            ("SIP/192.168.1.5-00000001", None, trunk("192.168.1.5")),
            ("DAHDI/i2/5551234-770d", None, trunk("i2/5551234")),
            ("IAX2/1003-123", None, ext("1003")),
            ("DAHDI/12-1", None, trunk("12")),
            ("Zap/1-1", None, trunk("1")),
            ("IAX2/provider-7", None, trunk("provider")),
            ("SIP/1002", None, ext("1002")),
            // A phone-looking endpoint created in a trunk context is a trunk.
            ("SIP/5000-00000001", Some("from-trunk"), trunk("5000")),
            (
                "Local/1001@from-queue-0000002a;1",
                None,
                Party::Local("1001".into()),
            ),
            (
                "Local/1001@from-queue-0000abcd;2",
                None,
                Party::Local("1001".into()),
            ),
            (
                "Local/1001@from-queue-abcd,1",
                None,
                Party::Local("1001".into()),
            ),
            ("SIP/100-0001<ZOMBIE>", None, Party::Placeholder),
            ("SIP/pstn-000000c4<MASQ>", None, Party::Placeholder),
            ("Transfered/SIP/pstn-000000c4", None, Party::Placeholder),
            ("Parked/SIP/1001-00000001", None, Party::Placeholder),
            ("garbage", None, Party::Placeholder),
            ("", None, Party::Placeholder),
            ("SIP/", None, Party::Placeholder),
        ];
        for (name, ctx, want) in cases {
            assert_eq!(&c.classify(name, *ctx), want, "{name} in {ctx:?}");
        }
    }

    #[test]
    fn configurable_patterns_and_mapping() {
        let mut cfg = ClassifierConfig::default();
        cfg.trunk_channels.push("^PJSIP/1999-".into());
        cfg.extension_channels.push("^PJSIP/desk-".into());
        cfg.endpoint_extensions
            .insert("ana-phone".into(), "1001".into());
        let c = Classifier::new(&cfg).unwrap();
        assert_eq!(
            c.classify("PJSIP/1999-00000001", None),
            Party::Trunk("1999".into())
        );
        assert_eq!(
            c.classify("PJSIP/desk-00000001", None),
            Party::Extension("desk".into())
        );
        assert_eq!(
            c.classify("PJSIP/ana-phone-00000001", None),
            Party::Extension("1001".into())
        );
        let bad = ClassifierConfig {
            extension_pattern: "(".into(),
            ..ClassifierConfig::default()
        };
        assert_eq!(Classifier::new(&bad).unwrap_err().len(), 1);
    }

    #[test]
    fn interfaces() {
        let c = Classifier::default();
        assert_eq!(interface_extension(&c, "SIP/1002").as_deref(), Some("1002"));
        assert_eq!(
            interface_extension(&c, "Local/1001@from-queue/n").as_deref(),
            Some("1001")
        );
        assert_eq!(interface_extension(&c, "SIP/pstn"), None);
    }
}

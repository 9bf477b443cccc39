//! The deserializer of one [`Node`] (a placeholder when poisoned or
//! injected) and its sequence, mapping and enum access; unknown keys are
//! reported with the closest known key and skipped.

use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

use super::scalar::{keeps_text, parse_int, resolve, Resolved};
use super::{Ctx, Error};
use crate::yaml::{is_null, Entry, Kind, Node, Path, Problem};

/// The deserializer of one node; `node: None` is a placeholder.
pub(super) struct NodeDe<'a> {
    pub(super) node: Option<&'a Node>,
    pub(super) path: Path,
    pub(super) ctx: &'a Ctx,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, path: Path) -> NodeDe<'a> {
        let poisoned = self.ctx.poisoned.contains(&path);
        NodeDe {
            node: (!poisoned).then_some(node),
            path,
            ctx: self.ctx,
        }
    }

    fn placeholder(&self, path: Path) -> NodeDe<'a> {
        NodeDe {
            node: None,
            path,
            ctx: self.ctx,
        }
    }

    fn tag(&self, mut e: Error) -> Error {
        if e.path.is_none() {
            e.path = Some(self.path.clone());
            e.pos = self.node.map(|n| n.span.start);
            e.from_placeholder = self.node.is_none();
        }
        e
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.node?.kind {
            Kind::Scalar { text, plain } => Some((text.as_str(), *plain)),
            _ => None,
        }
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match self.node.map(|n| &n.kind) {
            Some(Kind::Scalar { text, plain: true }) if is_null(text) => Unexpected::Unit,
            Some(Kind::Scalar { text, .. }) => Unexpected::Str(text),
            Some(Kind::Seq(_)) => Unexpected::Seq,
            Some(Kind::Map(_)) => Unexpected::Map,
            None => Unexpected::Other("nothing"),
        }
    }

    fn is_null(&self) -> bool {
        self.node.is_some_and(Node::is_null)
    }
}

macro_rules! int_method {
    ($name:ident, $visit:ident) => {
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let r = match self.node {
                None => visitor.visit_u64(0),
                Some(_) => match self.scalar().map(|(t, _)| resolve(t.trim(), true)) {
                    Some(Resolved::U(u)) => visitor.visit_u64(u),
                    Some(Resolved::I(i)) => visitor.visit_i64(i),
                    _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
                },
            };
            r.map_err(|e| self.tag(e))
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node.map(|n| &n.kind) {
            None => visitor.visit_str(""),
            Some(Kind::Scalar { text, plain }) => match resolve(text, *plain) {
                _ if *plain && keeps_text(text) && parse_int(text).is_some() => {
                    visitor.visit_str(text)
                }
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::U(u) => visitor.visit_u64(u),
                Resolved::I(i) => visitor.visit_i64(i),
                Resolved::F(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_str(s),
            },
            Some(Kind::Seq(_)) => return self.deserialize_seq(visitor),
            Some(Kind::Map(_)) => return self.deserialize_map(visitor),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_bool(false),
            Some(_) => match self.scalar().map(|(t, p)| resolve(t, p)) {
                Some(Resolved::Bool(b)) => visitor.visit_bool(b),
                _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    int_method!(deserialize_i8, visit_i64);
    int_method!(deserialize_i16, visit_i64);
    int_method!(deserialize_i32, visit_i64);
    int_method!(deserialize_i64, visit_i64);
    int_method!(deserialize_u8, visit_u64);
    int_method!(deserialize_u16, visit_u64);
    int_method!(deserialize_u32, visit_u64);
    int_method!(deserialize_u64, visit_u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_f64(0.0),
            Some(_) => match self.scalar().map(|(t, _)| resolve(t.trim(), true)) {
                Some(Resolved::U(u)) => visitor.visit_f64(u as f64),
                Some(Resolved::I(i)) => visitor.visit_f64(i as f64),
                Some(Resolved::F(f)) => visitor.visit_f64(f),
                _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.scalar() {
            _ if self.node.is_none() => visitor.visit_char(' '),
            Some((t, _)) if t.chars().count() == 1 => {
                visitor.visit_char(t.chars().next().unwrap_or(' '))
            }
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_str(""),
            Some(_) if self.is_null() => visitor.visit_str(""),
            Some(_) => match self.scalar() {
                Some((t, _)) => visitor.visit_str(t),
                None => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_none() || self.is_null() {
            visitor.visit_none().map_err(|e| self.tag(e))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = if self.node.is_none() || self.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &visitor))
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: &[Node] = match self.node.map(|n| &n.kind) {
            Some(Kind::Seq(items)) => items,
            None => &[],
            Some(_) if self.is_null() => &[],
            Some(_) => {
                let e = de::Error::invalid_type(self.unexpected(), &visitor);
                return Err(self.tag(e));
            }
        };
        let r = visitor.visit_seq(Seq {
            parent: &self,
            items,
            next: 0,
            placeholders: 0,
        });
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_none() {
            let r = visitor.visit_seq(Seq {
                parent: &self,
                items: &[],
                next: 0,
                placeholders: len,
            });
            return r.map_err(|e| self.tag(e));
        }
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.map(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.map(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let r = match self.node.map(|n| &n.kind) {
            None => visitor.visit_enum(Enum {
                variant: variants.first().copied().unwrap_or(""),
                value: None,
                de: &self,
            }),
            Some(Kind::Scalar { text, .. }) => visitor.visit_enum(Enum {
                variant: text,
                value: None,
                de: &self,
            }),
            Some(Kind::Map(entries)) if entries.len() == 1 => visitor.visit_enum(Enum {
                variant: &entries[0].key,
                value: Some(&entries[0].value),
                de: &self,
            }),
            Some(_) => Err(de::Error::invalid_type(
                self.unexpected(),
                &"one of the documented values",
            )),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

impl<'a> NodeDe<'a> {
    fn map<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let entries: &[Entry] = match self.node.map(|n| &n.kind) {
            Some(Kind::Map(entries)) => entries,
            Some(_) if self.is_null() => &[],
            None => &[],
            Some(_) => {
                let e = de::Error::invalid_type(self.unexpected(), &visitor);
                return Err(self.tag(e));
            }
        };
        // A placeholder struct is a struct of placeholders.
        let mut extra: Vec<&'static str> = match (self.node, fields) {
            (None, Some(f)) => f.to_vec(),
            _ => Vec::new(),
        };
        if let Some(inj) = self.ctx.injected.get(&self.path) {
            extra.extend(inj.iter().filter(|k| !entries.iter().any(|e| e.key == **k)));
        }
        if let Some(fields) = fields {
            for e in entries {
                if !fields.contains(&e.key.as_str()) {
                    self.ctx
                        .soft
                        .borrow_mut()
                        .push(unknown_key(&self.path, e, fields));
                }
            }
        }
        let r = visitor.visit_map(Map {
            parent: &self,
            entries,
            fields,
            next: 0,
            extra,
            value: None,
        });
        r.map_err(|e| self.tag(e))
    }
}

fn unknown_key(at: &Path, e: &Entry, fields: &[&str]) -> Problem {
    let near = fields
        .iter()
        .map(|f| (strsim::damerau_levenshtein(f, &e.key), *f))
        .filter(|(d, f)| *d <= 2.max(f.len() / 3))
        .min();
    let mut known: Vec<&str> = fields.to_vec();
    known.sort_unstable();
    Problem {
        path: at.key(e.key.clone()),
        pos: Some(e.key_span.start),
        message: match near {
            Some((_, f)) => format!("unknown key `{}` (did you mean `{f}`?)", e.key),
            None => format!("unknown key `{}`", e.key),
        },
        hint: Some(format!("known keys here: {}", known.join(", "))),
        needle: None,
    }
}

struct Seq<'p, 'a> {
    parent: &'p NodeDe<'a>,
    items: &'a [Node],
    next: usize,
    placeholders: usize,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let i = self.next;
        self.next += 1;
        if let Some(n) = self.items.get(i) {
            let de = self.parent.child(n, self.parent.path.index(i));
            return seed.deserialize(de).map(Some);
        }
        if i < self.placeholders {
            let de = self.parent.placeholder(self.parent.path.index(i));
            return seed.deserialize(de).map(Some);
        }
        Ok(None)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len().max(self.placeholders))
    }
}

struct Map<'p, 'a> {
    parent: &'p NodeDe<'a>,
    entries: &'a [Entry],
    fields: Option<&'static [&'static str]>,
    next: usize,
    extra: Vec<&'static str>,
    value: Option<NodeDe<'a>>,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        while let Some(e) = self.entries.get(self.next) {
            self.next += 1;
            if self.fields.is_some_and(|f| !f.contains(&e.key.as_str())) {
                continue;
            }
            let path = self.parent.path.key(e.key.clone());
            self.value = Some(self.parent.child(&e.value, path.clone()));
            let key = Node {
                kind: Kind::Scalar {
                    text: e.key.clone(),
                    plain: true,
                },
                span: e.key_span,
            };
            let kd = NodeDe {
                node: Some(&key),
                path: path.clone(),
                ctx: self.parent.ctx,
            };
            return seed.deserialize(kd).map(Some);
        }
        if let Some(k) = self.extra.pop() {
            self.value = Some(self.parent.placeholder(self.parent.path.key(k)));
            return seed.deserialize(k.into_deserializer()).map(Some);
        }
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::custom("value without a key")),
        }
    }
}

struct Enum<'p, 'a> {
    variant: &'a str,
    value: Option<&'a Node>,
    de: &'p NodeDe<'a>,
}

impl<'de, 'p, 'a> EnumAccess<'de> for Enum<'p, 'a> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let v = seed.deserialize(self.variant.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for Enum<'_, '_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.inner())
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self.inner(), len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self.inner(), "", fields, visitor)
    }
}

impl<'a> Enum<'_, 'a> {
    fn inner(&self) -> NodeDe<'a> {
        let path = self.de.path.key(self.variant.to_string());
        match self.value {
            Some(n) => self.de.child(n, path),
            None => self.de.placeholder(path),
        }
    }
}

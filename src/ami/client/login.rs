//! Connecting and logging in (banner, MD5 or plain login), the writer task,
//! and logging off.

use super::*;

impl Client {
    pub(super) async fn connect(&mut self) -> Result<Session, ConnectError> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.cancelled() => Err(ConnectError::Shutdown),
            r = self.connect_and_login() => r,
        }
    }

    pub(super) async fn connect_and_login(&mut self) -> Result<Session, ConnectError> {
        let cfg = &self.cfg;
        let pbx = &self.pbx;
        let seq = self.conn_seq;
        let step = cfg.action_timeout;
        let stream = match timeout(
            cfg.connect_timeout,
            TcpStream::connect((cfg.host.as_str(), cfg.port)),
        )
        .await
        {
            Err(_) => {
                return Err(ConnectError::Io(format!(
                    "connect timed out after {:?}",
                    cfg.connect_timeout
                )))
            }
            Ok(Err(e)) => return Err(ConnectError::Io(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let codec = if cfg.keep_noise {
            AmiCodec::with_max_packet(cfg.max_packet)
        } else if self.presence.is_some() {
            route::codec_with_presence(cfg.max_packet)
        } else {
            route::codec(cfg.max_packet)
        };
        let mut framed = FrameReader::new(rd, codec);

        let banner = read_banner(&mut framed, pbx, step).await?;
        *self
            .banner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = banner.clone();
        let modern = banner.as_deref().and_then(ami_major).is_none_or(|m| m >= 2);
        let mut n = 0u64;

        let login = match cfg.auth {
            AuthMode::Md5 => {
                n += 1;
                let id = action_id(pbx, seq, n);
                let challenge = Action::new("Challenge").field("AuthType", "MD5");
                write_raw(&mut wr, &challenge, &id, step).await?;
                let resp = read_response(&mut framed, pbx, &id, step).await?;
                if !is_success(&resp) {
                    return Err(ConnectError::Auth(format!(
                        "MD5 challenge refused: {}",
                        resp.get("Message").unwrap_or("no message")
                    )));
                }
                let Some(ch) = resp.get("Challenge") else {
                    return Err(ConnectError::Protocol(
                        "challenge response without a Challenge".into(),
                    ));
                };
                Action::new("Login")
                    .field("AuthType", "MD5")
                    .field("Username", cfg.username.as_str())
                    .field("Key", md5_key(ch, &cfg.secret))
                    .field("Events", cfg.events.as_str())
            }
            AuthMode::Plain => Action::new("Login")
                .field("Username", cfg.username.as_str())
                .field("Secret", cfg.secret.as_str())
                .field("Events", cfg.events.as_str()),
        };
        n += 1;
        let id = action_id(pbx, seq, n);
        write_raw(&mut wr, &login, &id, step).await?;
        let resp = read_response(&mut framed, pbx, &id, step).await?;
        if !is_success(&resp) {
            count_action(pbx, "Login", "error");
            return Err(ConnectError::Auth(
                resp.get("Message").unwrap_or("no message").to_string(),
            ));
        }
        count_action(pbx, "Login", "success");
        info!(target: LOG_TARGET, pbx = %pbx,
            "logged in to AMI at {}:{} as {} ({})",
            cfg.host,
            cfg.port,
            cfg.username,
            banner.as_deref().unwrap_or("no banner")
        );

        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(wr, writer_rx));
        Ok(Session {
            reader: framed,
            writer_tx,
            writer,
            seq,
            next_n: n,
            pending: HashMap::new(),
            modern,
            ping: None,
            resync_in_flight: false,
            held: VecDeque::new(),
        })
    }

    /// Best-effort `Logoff`: waits briefly for the `Goodbye` (or EOF).
    pub(super) async fn logoff(&mut self, sess: &mut Session) {
        let (id, _) = sess.next_id(&self.pbx);
        let Ok(bytes) = Action::new("Logoff").encode(&id) else {
            return;
        };
        if sess.writer_tx.try_send(bytes).is_err() {
            return;
        }
        let wait = LOGOFF_TIMEOUT.min(self.cfg.action_timeout);
        let framed = &mut sess.reader;
        let _ = timeout(wait, async {
            while let Some(Ok(frame)) = framed.next().await {
                if let AmiFrame::Message(m) = frame {
                    if matches!(m.kind(), MessageKind::Response(_)) && m.action_id() == Some(&id) {
                        break;
                    }
                }
            }
        })
        .await;
        debug!(target: LOG_TARGET, pbx = %self.pbx, "logged off");
    }
}

pub(super) async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(buf) = rx.recv().await {
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

pub(super) async fn write_raw(
    wr: &mut OwnedWriteHalf,
    action: &Action,
    id: &str,
    step: Duration,
) -> Result<(), ConnectError> {
    let bytes = action
        .encode(id)
        .map_err(|e| ConnectError::Protocol(format!("cannot encode {}: {e}", action.name())))?;
    match timeout(step, wr.write_all(&bytes)).await {
        Err(_) => Err(ConnectError::Io("write timed out".into())),
        Ok(Err(e)) => Err(ConnectError::Io(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

pub(super) async fn read_banner(
    framed: &mut FrameReader<OwnedReadHalf>,
    pbx: &PbxId,
    step: Duration,
) -> Result<Option<String>, ConnectError> {
    let read = async {
        loop {
            match framed.next().await {
                None => return Err(ConnectError::Io("closed before the banner".into())),
                Some(Err(e)) => return Err(ConnectError::Io(e.to_string())),
                Some(Ok(AmiFrame::Banner(b))) => return Ok(Some(b)),
                Some(Ok(AmiFrame::Message(_) | AmiFrame::Ignored { .. })) => return Ok(None),
                Some(Ok(AmiFrame::Skipped { reason, .. })) => {
                    metrics()
                        .ami_packets_skipped
                        .with_label_values(&[pbx, reason.as_str()])
                        .inc();
                }
            }
        }
    };
    match timeout(step, read).await {
        Err(_) => Err(ConnectError::Protocol("no banner".into())),
        Ok(r) => r,
    }
}

pub(super) async fn read_response(
    framed: &mut FrameReader<OwnedReadHalf>,
    pbx: &PbxId,
    id: &str,
    step: Duration,
) -> Result<AmiMessage, ConnectError> {
    let read = async {
        loop {
            match framed.next().await {
                None => return Err(ConnectError::Io("closed during login".into())),
                Some(Err(e)) => return Err(ConnectError::Io(e.to_string())),
                Some(Ok(AmiFrame::Message(m))) => {
                    if matches!(m.kind(), MessageKind::Response(_)) && m.action_id() == Some(id) {
                        return Ok(m);
                    }
                }
                Some(Ok(AmiFrame::Skipped { reason, .. })) => {
                    metrics()
                        .ami_packets_skipped
                        .with_label_values(&[pbx, reason.as_str()])
                        .inc();
                }
                Some(Ok(AmiFrame::Banner(_) | AmiFrame::Ignored { .. })) => {}
            }
        }
    };
    match timeout(step, read).await {
        Err(_) => Err(ConnectError::Io("no answer during login".into())),
        Ok(r) => r,
    }
}

/// `hex(md5(challenge + secret))`, the `Key` of an MD5 login.
pub(crate) fn md5_key(challenge: &str, secret: &str) -> String {
    let mut h = Md5::new();
    h.update(challenge.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The ActionID of action `n` on connection `seq`.
pub(super) fn action_id(pbx: &str, seq: u64, n: u64) -> String {
    format!("{pbx}-{seq}-{n}")
}

/// Major AMI version from the banner (`Asterisk Call Manager/1.3` → 1).
pub(super) fn ami_major(banner: &str) -> Option<u32> {
    let v = banner.rsplit('/').next()?.trim();
    v.split('.').next()?.trim().parse().ok()
}

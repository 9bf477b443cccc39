//! The client's face to the rest of the service: [`AmiHandle`] sends
//! actions (and Originates awaiting their outcome) to the client task and
//! observes its state; the answers and errors an action gets.

use super::*;

/// The answer to an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResponse {
    /// The `Response:` packet (or the `OriginateResponse` event that resolved
    /// a still-pending `Originate`). A legacy `Response: Follows` carries its
    /// text in [`AmiMessage::body`].
    pub response: AmiMessage,
    /// List items, in order, without the closing `…Complete` event.
    pub items: Vec<AmiMessage>,
    /// The event that closed the list (`…Complete`, `EventList: Complete`),
    /// when there was one.
    pub complete: Option<AmiMessage>,
}

/// How [`AmiHandle::send_with`] sends an action.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// After a `Success` response, keep waiting this long for the
    /// `OriginateResponse` event with the same ActionID (see
    /// [`AmiHandle::originate`]).
    pub await_event: Option<Duration>,
    /// Put before the client's ActionID (`{prefix}{pbx}-{seq}-{n}`).
    pub id_prefix: Option<String>,
    /// Deadline counted from submission instead of
    /// [`ClientConfig::action_timeout`].
    pub timeout: Option<Duration>,
    /// The action comes from an AMI proxy client: an `Originate` is not
    /// announced to the normalizer.
    pub proxied: bool,
}

/// The outcome of [`AmiHandle::originate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginateReply {
    /// The ActionID the client gave the Originate.
    pub action_id: String,
    /// The immediate `Response: Success` ("Originate successfully queued").
    pub queued: AmiMessage,
    /// The `OriginateResponse` event (`Response` Success/Failure, `Reason`,
    /// `Channel`, `Uniqueid`).
    pub event: AmiMessage,
}

/// Why an action did not produce a response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmiError {
    /// Nothing answered within the action timeout.
    #[error("no answer within the action timeout")]
    Timeout,
    /// The connection was lost after the action was sent: outcome unknown.
    #[error("connection lost while the action was pending (outcome unknown)")]
    Disconnected,
    /// Asterisk answered `Response: Error` with this message.
    #[error("action rejected: {0}")]
    Rejected(String),
    /// The client is shut down.
    #[error("AMI client is shut down")]
    Shutdown,
    /// The action cannot be encoded.
    #[error("action cannot be encoded: {0}")]
    Encode(#[from] ActionError),
}

/// Connection state as seen through [`AmiHandle::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (waiting for the next attempt).
    Down,
    /// Connecting or logging in.
    Connecting,
    /// Logged in.
    LoggedIn,
    /// The task has ended (shutdown).
    Stopped,
}

impl ConnectionState {
    pub(super) fn gauge(self) -> i64 {
        match self {
            ConnectionState::Down | ConnectionState::Stopped => 0,
            ConnectionState::Connecting => 1,
            ConnectionState::LoggedIn => 2,
        }
    }
}

/// A handle to a running client: sends actions, observes the state.
#[derive(Clone)]
pub struct AmiHandle {
    pub(super) inner: Arc<HandleInner>,
}

pub(super) struct HandleInner {
    pub(super) pbx: PbxId,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) state: watch::Receiver<ConnectionState>,
    pub(super) action_timeout: Duration,
    pub(super) shutdown: CancellationToken,
    pub(super) tap: broadcast::Sender<Arc<AmiMessage>>,
    pub(super) banner: Arc<std::sync::Mutex<Option<String>>>,
}

impl fmt::Debug for AmiHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmiHandle")
            .field("pbx", &self.inner.pbx)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl AmiHandle {
    /// Sends an action and waits for its response (and list items).
    ///
    /// The ActionID is assigned by the client. See the module documentation
    /// for the outcomes and the re-send policy.
    pub async fn send(&self, action: Action) -> Result<ActionResponse, AmiError> {
        self.submit(action, SendOptions::default()).await
    }

    /// [`AmiHandle::send`] with [`SendOptions`].
    pub async fn send_with(
        &self,
        action: Action,
        opts: SendOptions,
    ) -> Result<ActionResponse, AmiError> {
        self.submit(action, opts).await
    }

    /// Sends an asynchronous `Originate` (`Async: true` is set) and waits for
    /// its outcome: the `Response` (queued or rejected) and then the
    /// `OriginateResponse` event carrying the same ActionID, for up to
    /// `outcome_wait` after the Response (make it longer than the
    /// Originate's `Timeout`). Like every non-read-only action it is never
    /// re-sent: a connection lost before the outcome gives
    /// [`AmiError::Disconnected`] (the call may or may not exist), no event
    /// in time gives [`AmiError::Timeout`].
    pub async fn originate(
        &self,
        action: Action,
        outcome_wait: Duration,
    ) -> Result<OriginateReply, AmiError> {
        let action = if action.get("Async").is_some() {
            action
        } else {
            action.field("Async", "true")
        };
        let opts = SendOptions {
            await_event: Some(outcome_wait),
            ..SendOptions::default()
        };
        let r = self.submit(action, opts).await?;
        let mut items = r.items.into_iter();
        let queued = items.next().unwrap_or_default();
        Ok(OriginateReply {
            action_id: r.response.action_id().unwrap_or("").to_string(),
            queued,
            event: r.response,
        })
    }

    async fn submit(&self, action: Action, opts: SendOptions) -> Result<ActionResponse, AmiError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(AmiError::Shutdown);
        }
        // Reject header injection before anything is queued.
        action.encode(opts.id_prefix.as_deref().unwrap_or("probe"))?;
        let started = Instant::now();
        let deadline = started + opts.timeout.unwrap_or(self.inner.action_timeout);
        let await_event = opts.await_event;
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            action,
            reply,
            deadline,
            await_event,
            id_prefix: opts.id_prefix,
            proxied: opts.proxied,
        };
        // The task enforces the deadline; this outer bound is a safety net.
        let safety = deadline + await_event.unwrap_or_default() + Duration::from_millis(500);
        match tokio::time::timeout_at(safety, self.inner.commands.send(cmd)).await {
            Err(_) => return Err(AmiError::Timeout),
            Ok(Err(_)) => return Err(AmiError::Shutdown),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(safety, rx).await {
            Err(_) => Err(AmiError::Timeout),
            Ok(Err(_)) => Err(AmiError::Shutdown),
            Ok(Ok(result)) => result,
        }
    }

    /// The PBX this handle talks to.
    pub fn pbx(&self) -> &PbxId {
        &self.inner.pbx
    }

    /// Every unsolicited event from now on (see the module documentation).
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<AmiMessage>> {
        self.inner.tap.subscribe()
    }

    /// The banner of the current (or last) connection,
    /// `Asterisk Call Manager/9.0.0`.
    pub fn banner(&self) -> Option<String> {
        self.inner
            .banner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// A receiver that observes every state change.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Waits until the client task has ended (after shutdown).
    pub async fn stopped(&self) {
        let mut rx = self.inner.state.clone();
        // An error means the task (the sender) is gone: stopped as well.
        let _ = rx.wait_for(|s| *s == ConnectionState::Stopped).await;
    }
}

/// An action on its way from a handle to the client task.
pub(super) struct Command {
    pub(super) action: Action,
    pub(super) reply: oneshot::Sender<Result<ActionResponse, AmiError>>,
    pub(super) deadline: Instant,
    /// After a `Success` response, keep waiting this long for the
    /// `OriginateResponse` event with the same ActionID.
    pub(super) await_event: Option<Duration>,
    /// [`SendOptions::id_prefix`].
    pub(super) id_prefix: Option<String>,
    /// [`SendOptions::proxied`].
    pub(super) proxied: bool,
}

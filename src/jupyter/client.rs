//! One connection to one kernel: shell and stdin share an identity (so the
//! kernel can route `input_request`s to us), iopub is subscribed to every
//! topic, control carries interrupts and shutdowns, and the heartbeat is a
//! separate REQ socket.
//!
//! Everything the kernel sends arrives, decoded and verified, on one channel of
//! [`KernelMessage`]s. A frame that fails to decode or verify is dropped and
//! counted; the connection keeps serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, ReqSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket,
};

use super::connection::ConnectionInfo;
use super::message::Message;
use super::wire::{self, Signer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Shell,
    Control,
    Iopub,
    Stdin,
}

#[derive(Debug, Clone)]
pub struct KernelMessage {
    pub channel: Channel,
    pub msg: Message,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("zeromq: {0}")]
    Zmq(#[from] zeromq::ZmqError),
    #[error("timed out connecting to the kernel at {0}")]
    ConnectTimeout(String),
    #[error("the kernel did not answer kernel_info within {0:?}")]
    NotReady(Duration),
    #[error("the kernel connection is closed")]
    Closed,
}

type Sender = Mutex<zeromq::DealerSendHalf>;

pub struct KernelClient {
    session: String,
    signer: Signer,
    shell: Sender,
    control: Sender,
    stdin: Sender,
    readers: Vec<JoinHandle<()>>,
    /// Becomes true when the kernel's end of shell or control went away.
    gone: watch::Receiver<bool>,
    /// Frames dropped because they failed to decode or verify.
    pub dropped: Arc<AtomicU64>,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("session", &self.session)
            .finish()
    }
}

async fn connect_socket<S: Socket>(
    sock: &mut S,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), ClientError> {
    match tokio::time::timeout(timeout, sock.connect(endpoint)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClientError::ConnectTimeout(endpoint.to_string())),
    }
}

fn options(identity: Option<&[u8]>) -> SocketOptions {
    let mut o = SocketOptions::default();
    o.no_connect_timeout();
    if let Some(id) = identity.and_then(|id| PeerIdentity::try_from(Bytes::copy_from_slice(id)).ok()) {
        o.peer_identity(id);
    }
    o
}

impl KernelClient {
    /// Connects all channels; messages from the kernel go to `sink`.
    /// `identity` is the shell/stdin routing identity: keeping it across
    /// sidecar restarts lets a reattached sidecar receive replies to requests
    /// its predecessor sent.
    pub async fn connect(
        info: &ConnectionInfo,
        identity: &[u8],
        session: &str,
        sink: mpsc::Sender<KernelMessage>,
        dropped: Arc<AtomicU64>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let signer = Signer::new(&info.key);

        let mut iopub = SubSocket::with_options(options(None));
        iopub.subscribe("").await?;
        connect_socket(&mut iopub, &info.endpoint(info.iopub_port), timeout).await?;
        let mut shell = DealerSocket::with_options(options(Some(identity)));
        connect_socket(&mut shell, &info.endpoint(info.shell_port), timeout).await?;
        let mut stdin = DealerSocket::with_options(options(Some(identity)));
        connect_socket(&mut stdin, &info.endpoint(info.stdin_port), timeout).await?;
        let mut control = DealerSocket::with_options(options(None));
        connect_socket(&mut control, &info.endpoint(info.control_port), timeout).await?;

        // A kernel that exits closes its sockets: the dealer sockets see
        // their peer go at once (they do not reconnect). The heartbeat alone
        // misses a kernel whose container restarts within its timeout.
        let (gone_tx, gone) = watch::channel(false);
        let watchers = [shell.monitor(), control.monitor()].map(|mut events| {
            let gone_tx = gone_tx.clone();
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if matches!(event, SocketEvent::Disconnected(_)) {
                        let _ = gone_tx.send(true);
                        return;
                    }
                }
            })
        });
        let (shell_tx, shell_rx) = shell.split();
        let (stdin_tx, stdin_rx) = stdin.split();
        let (control_tx, control_rx) = control.split();
        let mut readers = vec![
            spawn_reader(
                iopub,
                Channel::Iopub,
                signer.clone(),
                sink.clone(),
                dropped.clone(),
            ),
            spawn_reader(
                shell_rx,
                Channel::Shell,
                signer.clone(),
                sink.clone(),
                dropped.clone(),
            ),
            spawn_reader(
                stdin_rx,
                Channel::Stdin,
                signer.clone(),
                sink.clone(),
                dropped.clone(),
            ),
            spawn_reader(
                control_rx,
                Channel::Control,
                signer.clone(),
                sink,
                dropped.clone(),
            ),
        ];
        readers.extend(watchers);
        Ok(KernelClient {
            session: session.to_string(),
            signer,
            shell: Mutex::new(shell_tx),
            control: Mutex::new(control_tx),
            stdin: Mutex::new(stdin_tx),
            readers,
            gone,
            dropped,
        })
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// A new request of this client's session.
    pub fn request(&self, msg_type: &str, content: serde_json::Value) -> Message {
        Message::new(msg_type, content, &self.session)
    }

    pub async fn send(&self, channel: Channel, msg: &Message) -> Result<(), ClientError> {
        let frames = wire::encode(msg, &self.signer);
        let sock = match channel {
            Channel::Shell => &self.shell,
            Channel::Control => &self.control,
            Channel::Stdin => &self.stdin,
            Channel::Iopub => return Err(ClientError::Closed),
        };
        sock.lock().await.send(frames).await?;
        Ok(())
    }

    /// Turns true when the kernel's end of the connection closed (the
    /// kernel process exited); a new kernel needs a new client.
    pub fn disconnected(&self) -> watch::Receiver<bool> {
        self.gone.clone()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn spawn_reader<R: SocketRecv + Send + 'static>(
    mut sock: R,
    channel: Channel,
    signer: Signer,
    sink: mpsc::Sender<KernelMessage>,
    dropped: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let frames = match sock.recv().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(?channel, error = %e, "kernel channel closed");
                    return;
                }
            };
            match wire::decode(frames, &signer) {
                Ok(msg) => {
                    if sink.send(KernelMessage { channel, msg }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?channel, error = %e, "dropped a kernel message");
                }
            }
        }
    })
}

/// The heartbeat channel: a REQ socket that echoes. A REQ socket whose ping
/// went unanswered is stuck, so a miss replaces the socket.
pub struct Heartbeat {
    endpoint: String,
    sock: Option<ReqSocket>,
}

impl Heartbeat {
    pub fn new(info: &ConnectionInfo) -> Self {
        Heartbeat {
            endpoint: info.endpoint(info.hb_port),
            sock: None,
        }
    }

    /// True when the kernel echoed within `timeout`.
    pub async fn ping(&mut self, timeout: Duration) -> bool {
        let endpoint = self.endpoint.clone();
        let attempt = async {
            if self.sock.is_none() {
                let mut s = ReqSocket::with_options(options(None));
                s.connect(&endpoint).await.ok()?;
                self.sock = Some(s);
            }
            let s = self.sock.as_mut()?;
            s.send(zeromq::ZmqMessage::from(b"ping".to_vec())).await.ok()?;
            s.recv().await.ok()
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Some(_)) => true,
            _ => {
                self.sock = None;
                false
            }
        }
    }
}

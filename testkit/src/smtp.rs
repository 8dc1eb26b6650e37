//! An in-process SMTP server on 127.0.0.1 (`mailin-embedded`, plain text, no auth) that keeps
//! every message it accepts.
//!
//! `mailin-embedded` serves with blocking IO and its error type is not `Send`, so the server
//! runs on its own std thread for the rest of the test process.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use mailin_embedded::{response, Handler, Response, Server, SslConfig};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpBehavior {
    /// Accept every message (the default).
    #[default]
    Accept,
    /// Refuse every recipient with `550 Mailbox unavailable` (permanent).
    RejectRecipients,
    /// Defer every recipient with `451` (transient).
    DeferRecipients,
}

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEmail {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The raw message: headers and MIME body as sent in `DATA`.
    pub data: String,
}

impl ReceivedEmail {
    /// The value of the first header called `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if !key.eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = value.trim().to_owned();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
        None
    }
}

#[derive(Debug, Default)]
struct Shared {
    behavior: Mutex<SmtpBehavior>,
    received: Mutex<Vec<ReceivedEmail>>,
}

/// The per-connection handler (mailin clones it for each session).
#[derive(Debug, Clone)]
struct Recorder {
    shared: Arc<Shared>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Recorder {
    fn rcpt(&mut self, _to: &str) -> Response {
        match *self.shared.behavior.lock().expect("behavior lock") {
            SmtpBehavior::Accept => response::OK,
            SmtpBehavior::RejectRecipients => response::NO_MAILBOX,
            SmtpBehavior::DeferRecipients => {
                Response::custom(451, "Requested action aborted: try again later".to_owned())
            }
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let email = ReceivedEmail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        };
        self.shared
            .received
            .lock()
            .expect("received lock")
            .push(email);
        response::OK
    }
}

/// A running SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpFake {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl SmtpFake {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP fake");
        let port = listener.local_addr().expect("fake's local address").port();
        let shared = Arc::new(Shared::default());
        let recorder = Recorder {
            shared: Arc::clone(&shared),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        std::thread::Builder::new()
            .name(format!("smtp-fake-{port}"))
            .spawn(move || {
                let mut server = Server::new(recorder);
                server
                    .with_name("smtp-fake.localhost")
                    .with_tcp_listener(listener);
                if server.with_ssl(SslConfig::None).is_err() {
                    return;
                }
                // Runs until the process exits; errors only end this thread.
                let _ = server.serve();
            })
            .expect("spawn the SMTP fake thread");
        Self { port, shared }
    }

    /// Changes how subsequent recipients are answered.
    pub fn set_behavior(&self, behavior: SmtpBehavior) {
        *self.shared.behavior.lock().expect("behavior lock") = behavior;
    }

    /// Every message accepted so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedEmail> {
        self.shared.received.lock().expect("received lock").clone()
    }
}

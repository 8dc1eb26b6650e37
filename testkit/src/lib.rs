//! Test-only: loopback stand-ins for the providers (Twilio messages, voice and video, SMTP, the
//! payment provider), shared by the integration tests of `consult-reactors` and `consult`.
//! A dev-dependency only; nothing in the product depends on it.

pub mod payments;
pub mod smtp;
pub mod twilio;
pub mod video;

/// A base URL where nothing listens: a provider that cannot be reached.
pub async fn closed_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

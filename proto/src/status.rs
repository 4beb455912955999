//! A bound on the error messages Sluice's gRPC servers send. A message travels in the
//! `grpc-message` header, and a client refuses (resets) a response whose headers exceed
//! its limit (16 KiB by default): a message quoting long user input (a 10,000-character
//! job id and the spec it failed to parse) would reach the caller as an anonymous
//! protocol error instead of the error it names. Every server adds [`bounded_status_messages`],
//! which shortens such a message and says by how much.

use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;
use tower::layer::util::{Identity, Stack};
use tower::util::MapResponseLayer;

/// The longest `grpc-message` header (percent-encoded) a server sends unchanged.
pub const MAX_ENCODED_MESSAGE: usize = 8 << 10;

/// How much of a longer message is kept: percent-encoding at most triples it, so the
/// shortened header stays under [`MAX_ENCODED_MESSAGE`].
const KEPT_MESSAGE_BYTES: usize = 2 << 10;

/// A response mapping that shortens an over-long error message.
pub type BoundedStatusMessages = MapResponseLayer<fn(http::Response<Body>) -> http::Response<Body>>;

/// A gRPC server whose error messages are bounded.
pub type BoundedServer = tonic::transport::Server<Stack<BoundedStatusMessages, Identity>>;

/// The layer to add to a server: `Server::builder().layer(bounded_status_messages())`.
pub fn bounded_status_messages() -> BoundedStatusMessages {
    MapResponseLayer::new(bound_status_message)
}

/// A server builder with the bound on its error messages.
pub fn server() -> BoundedServer {
    tonic::transport::Server::builder().layer(bounded_status_messages())
}

/// Shortens the response's error message if its header is longer than
/// [`MAX_ENCODED_MESSAGE`]; any other response passes unchanged.
fn bound_status_message(mut response: http::Response<Body>) -> http::Response<Body> {
    let too_long = response
        .headers()
        .get(Status::GRPC_MESSAGE)
        .is_some_and(|message| message.len() > MAX_ENCODED_MESSAGE);
    if !too_long {
        return response;
    }
    if let Some(status) = Status::from_header_map(response.headers()) {
        let shortened = Status::new(status.code(), shorten(status.message()));
        // Only fails for a message that cannot be encoded, which a shortened one can.
        let _ = shortened.add_header(response.headers_mut());
    }
    response
}

/// The first [`KEPT_MESSAGE_BYTES`] of `message` (at a character boundary), and how much
/// was left out.
fn shorten(message: &str) -> String {
    if message.len() <= KEPT_MESSAGE_BYTES {
        return message.to_string();
    }
    let mut end = KEPT_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (error message shortened: {} of its {} bytes left out)",
        &message[..end],
        message.len() - end,
        message.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn error_response(message: &str) -> http::Response<Body> {
        Status::new(Code::FailedPrecondition, message).into_http()
    }

    #[test]
    fn a_long_message_is_shortened_and_says_so() {
        let message = format!("job {}: {}", "x".repeat(8_581), "é".repeat(5_000));
        let response = bound_status_message(error_response(&message));
        let header = response.headers().get(Status::GRPC_MESSAGE).unwrap();
        assert!(
            header.len() <= MAX_ENCODED_MESSAGE,
            "{} bytes",
            header.len()
        );
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().starts_with("job xxxx"));
        assert!(
            status
                .message()
                .ends_with(&format!("of its {} bytes left out)", message.len())),
            "{}",
            status.message()
        );
    }

    #[test]
    fn a_long_message_of_wide_characters_is_cut_at_a_character_boundary() {
        let message = "💥".repeat(3_000);
        let response = bound_status_message(error_response(&message));
        let status = Status::from_header_map(response.headers()).unwrap();
        assert!(status.message().starts_with("💥💥"));
        assert!(status.message().contains("bytes left out"));
    }

    #[test]
    fn a_message_within_the_bound_is_unchanged() {
        let message = format!("job {} is unknown", "y".repeat(3_000));
        let response = bound_status_message(error_response(&message));
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.message(), message);
    }
}

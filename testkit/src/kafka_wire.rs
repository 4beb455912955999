//! Kafka's wire framing, as the test gate reads and writes it: size-prefixed frames, the
//! fixed start of a request, strings.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ApiVersions request's API key.
pub(crate) const API_VERSIONS: i16 = 18;

/// Where the entries of an ApiVersions answer of version 0 to 2 lie (correlation id,
/// error code, an i32 count, then 6-byte entries: key, oldest, newest version), when the
/// answer has no error and holds them all.
pub(crate) fn api_versions_entries(answer: &[u8]) -> Option<std::ops::Range<usize>> {
    if answer.get(4..6)? != [0, 0] {
        return None;
    }
    let count = i32::from_be_bytes(answer.get(6..10)?.try_into().ok()?);
    let end = 10 + 6 * count.max(0) as usize;
    (answer.len() >= end).then_some(10..end)
}

/// The fixed start of a request: api key, version, correlation id, client id.
pub(crate) struct RequestHeader {
    pub(crate) api_key: i16,
    pub(crate) api_version: i16,
    pub(crate) correlation_id: i32,
    /// Where the body starts (request header v1, as these requests use).
    pub(crate) body: usize,
}

impl RequestHeader {
    pub(crate) fn parse(request: &[u8]) -> Option<RequestHeader> {
        let api_key = i16::from_be_bytes(request.get(0..2)?.try_into().ok()?);
        let api_version = i16::from_be_bytes(request.get(2..4)?.try_into().ok()?);
        let correlation_id = i32::from_be_bytes(request.get(4..8)?.try_into().ok()?);
        let client_id_len = i16::from_be_bytes(request.get(8..10)?.try_into().ok()?);
        Some(RequestHeader {
            api_key,
            api_version,
            correlation_id,
            body: 10 + client_id_len.max(0) as usize,
        })
    }
}

/// Appends `text` as a Kafka string (i16 length, bytes).
pub(crate) fn push_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as i16).to_be_bytes());
    out.extend(text.as_bytes());
}

/// Reads one size-prefixed frame (at most 64 MiB).
pub(crate) async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin + ?Sized),
) -> std::io::Result<Vec<u8>> {
    let len = stream.read_i32().await?;
    if !(0..=64 << 20).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame size out of range",
        ));
    }
    let mut frame = vec![0; len as usize];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Writes `frame` with its size in front.
pub(crate) async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin + ?Sized),
    frame: &[u8],
) -> std::io::Result<()> {
    stream.write_i32(frame.len() as i32).await?;
    stream.write_all(frame).await?;
    stream.flush().await
}

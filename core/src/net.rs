//! Listening sockets.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds a listener and returns it with the address it got (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// The connections `listener` accepts, with Nagle's algorithm off: gRPC and Arrow Flight
/// answer with small frames, which Nagle would hold back until the peer's delayed ACK
/// (about 40 ms per exchange).
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        Some((accepted, listener))
    })
}

/// Completes once `stop` turns true (or its sender is gone): a server's shutdown signal.
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

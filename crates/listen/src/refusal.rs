//! hyper answers a request head it cannot parse (400) or that is too large (431) itself,
//! before any service sees it, so those answers would carry no `x-request-id`. A client or
//! operator then has nothing to quote. [`RefusalId`] wraps a connection's byte stream and,
//! when the first bytes the server writes are such an answer, adds the header on the way
//! out, with an id from the listener's [`OnRefusal`] (which logs the refusal).
//!
//! Only the connection's first answer is looked at: there the stream is certainly at the
//! start of a response head, and if no request was handed to the service yet the answer is
//! hyper's own. Later in a keep-alive connection the bytes could be a guest's body that
//! merely looks like a head — rewriting those would change a response's length, which is
//! exactly the smuggling we must never allow.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Activity;

/// The header that carries a request's id.
pub const REQUEST_ID: &str = "x-request-id";

/// Called with the status and the client's address when hyper refuses a connection's first
/// request head; logs the refusal and answers the request id it was logged under.
pub type OnRefusal = Arc<dyn Fn(u16, SocketAddr) -> String + Send + Sync>;

/// A connection's stream that tags hyper's own first refusal with an `x-request-id`.
pub struct RefusalId<S> {
    inner: S,
    activity: Activity,
    peer: SocketAddr,
    on_refusal: OnRefusal,
    first: First,
}

enum First {
    /// Nothing written yet.
    Unwritten,
    /// The rewritten first answer, accepted from hyper in full, partly passed on.
    Pending { bytes: Vec<u8>, written: usize },
    /// The first answer has gone; the rest passes through untouched.
    Passed,
}

impl<S> RefusalId<S> {
    pub fn new(inner: S, activity: Activity, peer: SocketAddr, on_refusal: OnRefusal) -> Self {
        Self {
            inner,
            activity,
            peer,
            on_refusal,
            first: First::Unwritten,
        }
    }
}

/// The status of an HTTP/1 answer of 400 or 431 that has no request id yet.
fn refused_status(answer: &[u8]) -> Option<u16> {
    let status = match answer.get(..13)? {
        b"HTTP/1.1 400 " | b"HTTP/1.0 400 " => 400,
        b"HTTP/1.1 431 " | b"HTTP/1.0 431 " => 431,
        _ => return None,
    };
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    (!head.contains("\r\nx-request-id:")).then_some(status)
}

/// `answer` (a refusal, see [`refused_status`]) with `x-request-id: id` after its status
/// line.
fn tag(answer: &[u8], id: &str) -> Option<Vec<u8>> {
    let line_end = answer.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut tagged = Vec::with_capacity(answer.len() + REQUEST_ID.len() + id.len() + 4);
    tagged.extend_from_slice(&answer[..line_end]);
    tagged.extend_from_slice(REQUEST_ID.as_bytes());
    tagged.extend_from_slice(b": ");
    tagged.extend_from_slice(id.as_bytes());
    tagged.extend_from_slice(b"\r\n");
    tagged.extend_from_slice(&answer[line_end..]);
    Some(tagged)
}

impl<S: AsyncWrite + Unpin> RefusalId<S> {
    /// Passes on what is left of a rewritten first answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let First::Pending { bytes, written } = &mut self.first {
            if *written == bytes.len() {
                self.first = First::Passed;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// The first write: rewritten and held when it is hyper's own refusal, else passed on.
    fn first_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if !matches!(self.first, First::Unwritten) || buf.is_empty() {
            return None;
        }
        self.first = First::Passed;
        if self.activity.has_served() {
            return None;
        }
        let status = refused_status(buf)?;
        let id = (self.on_refusal)(status, self.peer);
        let tagged = tag(buf, &id)?;
        self.first = First::Pending {
            bytes: tagged,
            written: 0,
        };
        // All of `buf` is taken now; what the socket does not accept yet goes on the next
        // write or flush (hyper flushes after an answer).
        match self.poll_pending(cx) {
            Poll::Ready(Err(error)) => Some(Poll::Ready(Err(error))),
            _ => Some(Poll::Ready(Ok(buf.len()))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RefusalId<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RefusalId<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(done) = this.first_write(cx, buf) {
            return done;
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.first, First::Unwritten)
            && let Some(buf) = bufs.iter().find(|b| !b.is_empty())
            && let Some(done) = this.first_write(cx, buf)
        {
            return done;
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn a_refusal_gets_an_id_after_its_status_line() {
        let answer = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(refused_status(answer), Some(431));
        let tagged = tag(answer, "abc").unwrap();
        assert_eq!(
            tagged,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nx-request-id: abc\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn other_answers_and_tagged_ones_pass_untouched() {
        assert_eq!(
            refused_status(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            Some(400)
        );
        assert_eq!(refused_status(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(refused_status(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(
            refused_status(b"HTTP/1.1 400 Bad Request\r\nX-Request-Id: z\r\n\r\n"),
            None
        );
        assert_eq!(refused_status(b"\x00\x00\x12\x04\x00"), None);
    }

    fn id() -> OnRefusal {
        Arc::new(|status, _| format!("id-{status}"))
    }

    #[tokio::test]
    async fn the_first_refusal_is_tagged_and_nothing_after_it() {
        let (server, mut client) = tokio::io::duplex(16);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut stream = RefusalId::new(server, Activity::new(), peer, id());
        let writer = tokio::spawn(async move {
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            stream.write_all(b"HTTP/1.1 400 later").await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        writer.await.unwrap();
        assert_eq!(
            seen,
            "HTTP/1.1 400 Bad Request\r\nx-request-id: id-400\r\ncontent-length: 0\r\n\r\nHTTP/1.1 400 later"
        );
    }

    #[tokio::test]
    async fn a_connection_that_served_a_request_is_never_rewritten() {
        let (server, mut client) = tokio::io::duplex(1024);
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let activity = Activity::new();
        drop(activity.begin());
        let mut stream = RefusalId::new(server, activity, peer, id());
        stream
            .write_all(b"HTTP/1.1 400 body\r\n\r\n")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        assert_eq!(seen, "HTTP/1.1 400 body\r\n\r\n");
    }
}

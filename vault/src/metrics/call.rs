//! Measuring one call at the edge. A gRPC call's final code is in its
//! answer's trailers (or, when refused at once, in its headers), and a
//! streamed answer ends long after the handler returned, so the meter rides
//! along with the answer's body and records the call when that body is
//! finished with.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Code;

use super::Metrics;

/// One call being measured. Recorded once: when its answer's last frame
/// (the trailers) is produced, before the client can see it; or else when
/// the meter is dropped, with the code the answer's headers carried,
/// `UNKNOWN` if it ended without one, `CANCELLED` if it never ended (the
/// client went away, the connection was dropped).
pub struct CallMeter {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    code: Option<Code>,
    ended: bool,
    recorded: bool,
}

impl std::fmt::Debug for CallMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMeter").field("method", &self.method).field("code", &self.code).finish_non_exhaustive()
    }
}

impl CallMeter {
    pub(super) fn new(metrics: Arc<Metrics>, method: &'static str) -> Self {
        Self { metrics, method, started: Instant::now(), code: None, ended: false, recorded: false }
    }

    /// Records the call now, once.
    fn record(&mut self, code: Code) {
        if !std::mem::replace(&mut self.recorded, true) {
            self.metrics.call_ended(self.method, code, self.started.elapsed());
        }
    }

    /// The answer to the call, its body watched to its end.
    pub fn finish(mut self, response: http::Response<Body>) -> http::Response<Body> {
        self.code = grpc_code(response.headers());
        let (parts, body) = response.into_parts();
        self.ended = body.is_end_stream();
        http::Response::from_parts(parts, Body::new(MeteredBody { inner: body, meter: self }))
    }
}

impl Drop for CallMeter {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(if self.ended { Code::Unknown } else { Code::Cancelled });
        self.record(code);
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// An answer's body that tells its meter the code in its trailers and when
/// it ended.
struct MeteredBody {
    inner: Body,
    meter: CallMeter,
}

impl HttpBody for MeteredBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.meter.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.meter.record(status.code()),
            Poll::Ready(None) => {
                this.meter.ended = true;
                let code = this.meter.code.unwrap_or(Code::Unknown);
                this.meter.record(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Reading a request body whole, within a limit.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Fault;

/// Reads a body whole, refusing it as soon as it passes `limit` bytes. A body that arrives in
/// one piece is returned without copying.
pub async fn read_whole(mut body: Incoming, limit: u64) -> Result<Bytes, Fault> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Fault::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        }; // trailers are not forwarded
        total += data.len() as u64;
        if total > limit {
            return Err(Fault::TooLarge { max: limit });
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

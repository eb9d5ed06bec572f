//! Checks on a request's body by what its head declares: a length over `max_body` (413) and a
//! media type the route does not accept (415). The body itself is read, or streamed and
//! counted, as it is forwarded.

use http::HeaderMap;
use http::header::CONTENT_LENGTH;

use crate::config::Route;
use crate::media;
use crate::problem::{Limit, Problem};

/// Refuses a body by what its head declares: a length over `max_body`, or a media type the
/// route does not accept. `has_body` is false for requests that carry none (GET, empty).
pub fn check_head(route: &Route, headers: &HeaderMap, has_body: bool) -> Result<(), Problem> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body) {
        let max = route.max_body;
        return Err(Problem::TooLarge(Limit::Body { max }));
    }
    // An HTTP/2 request may end its stream only after its head, even with no body at all.
    let has_body = has_body && declared != Some(0);
    if let (true, Some(accepted)) = (has_body, &route.content_types)
        && !media::accepted(accepted, headers)
    {
        return Err(Problem::UnsupportedMediaType {
            accepted: accepted.clone(),
        });
    }
    Ok(())
}

//! The payload phase: a body refused by what its head declares, a length over `max_body` (413)
//! or a media type the route does not accept (415). The body itself is read, or streamed and
//! counted, as it is forwarded.

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Request};
use http_body::Body as _;

use super::Ctx;
use crate::body::Body;
use crate::config::Route;
use crate::media;
use crate::problem::{Limit, Problem};

pub(super) fn check(ctx: &Ctx<'_>, req: &Request<Body>) -> Result<(), Problem> {
    let route = &ctx.proxy.app.config.routes[ctx.route];
    check_head(route, req.headers(), !req.body().is_end_stream())
}

/// Refuses a body by what its head declares: a length over `max_body`, or a media type the
/// route does not accept. `has_body` is false for requests that carry none (GET, empty).
fn check_head(route: &Route, headers: &HeaderMap, has_body: bool) -> Result<(), Problem> {
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

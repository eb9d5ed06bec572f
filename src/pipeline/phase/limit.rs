//! The limit phase: the client's key under its policy (the key's own, else the route's) is
//! checked against the limiter's store; over the limit, 429. The verdict is kept for the
//! rate-limit headers of whatever the answer turns out to be.

use std::num::NonZeroU32;

use http::HeaderMap;

use super::Ctx;
use crate::problem::Problem;

/// One request's cost under its limits (a batch costs one per item).
const ONE: NonZeroU32 = NonZeroU32::MIN;

pub(super) async fn check(ctx: &mut Ctx<'_>, headers: &HeaderMap) -> Result<(), Problem> {
    let app = &*ctx.proxy.app;
    let own = ctx.who.and_then(|k| app.config.auth.keys[k].policy);
    let Some(i) = own.or(app.config.routes[ctx.route].policy) else {
        return Ok(());
    };
    let (verdict, admitted) = app
        .limits
        .check(&app.config, i, &ctx.caller(headers), ONE)
        .await;
    ctx.rec.verdict = verdict;
    admitted
}

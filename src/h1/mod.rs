//! HTTP/1.1 to an upstream, on the wire. The connection is driven by the task that uses it —
//! the request's own — so no connection task, and no channel between tasks, stands between a
//! request and its upstream; the answer's head is parsed once, straight into the response the
//! client gets, and its body is read off the socket as the client takes it.
//!
//! - `head.rs`: writing a request's head; parsing an answer's head and how its body is framed
//!   (pure, over buffers).
//! - `framing.rs`: an answer's body taken out of the bytes read, by its framing (pure).
//! - `conn.rs`: the connection (TCP, or TLS over it) with its buffers, and the answer's body
//!   read from it.

mod conn;
mod framing;
mod head;

pub use conn::{Conn, Io, Reader};
pub use framing::{Framing, Step};
pub use head::{Answer, Bad, Out, take_answer, write_request};

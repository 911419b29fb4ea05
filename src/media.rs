//! What a photo, a voice note or a document sent to the bot contains, read
//! from its bytes (issue 15).
//!
//! The readers are pure, synchronous, CPU-bound: no actors, no network, no logging of
//! content. The session calls them inside `tokio::task::spawn_blocking` once
//! a file is downloaded, and turns their typed errors into replies and
//! metrics (each error has a `label`). Every function is bounded by its
//! input and never panics on hostile bytes (PDF extraction runs under
//! `catch_unwind`).
//!
//! - [`image`]: format and dimensions from the header, and the `data:` URL
//!   an image is sent to the model as.
//! - [`document`]: the text of a text-like file or of a PDF, decoded,
//!   normalised and cut to a character budget.
//! - [`audio`]: a cheap sanity check of a voice note before transcription.
//! - [`fetch`]: the download itself (getFile, the file URL), off the actors,
//!   bounded and retried.

pub mod audio;
pub mod document;
pub mod fetch;
pub mod image;

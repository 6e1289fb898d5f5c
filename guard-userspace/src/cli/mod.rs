//! Layer 5, what the commands print: the `status` report, the lists, `top`.

pub mod list_view;
pub mod status;

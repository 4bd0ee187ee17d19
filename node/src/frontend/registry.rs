//! The front-ends a node serves: the HTTP router mounts each one's routes.

use super::Frontend;

/// Every front-end, in mounting order. A new protocol is one line here.
pub fn frontends() -> Vec<Box<dyn Frontend>> {
    vec![
        Box::new(super::native::Native),
        Box::new(super::cells::Cells),
        Box::new(super::phoenix::Phoenix),
        Box::new(super::socketio::SocketIo),
        Box::new(super::chain::Chain),
    ]
}

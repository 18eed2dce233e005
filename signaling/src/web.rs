//! The browser client a join link opens. Served by the binary: no CDN.

pub const ROOM_PAGE: &str = include_str!("../web/room.html");

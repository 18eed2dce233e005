//! The browser client a join link opens. Every file is compiled into the
//! binary and served from it: no CDN, no third-party request of any kind,
//! and the Content-Security-Policy forbids the page to make one.

/// The page at `/r/{room}`.
pub const ROOM_PAGE: &str = include_str!("../web/room.html");

/// What the page may load and connect to: only this origin (`'self'` covers
/// the same-origin WebSocket), and media it makes itself.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One file under `/assets/`.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/app.js"),
    },
    Asset {
        name: "connection.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/connection.js"),
    },
    Asset {
        name: "i18n.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/i18n.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
];

/// The asset called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

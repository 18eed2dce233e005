//! The browser client a join link opens. Every file is compiled into the
//! binary and served from it: no CDN, no third-party request of any kind,
//! and the Content-Security-Policy forbids the page to make one.

/// The page at `/r/{room}`.
pub const ROOM_PAGE: &str = include_str!("../web/room.html");

/// What the page may load and connect to: only this origin (`'self'` covers
/// the same-origin WebSocket), and media it makes itself. The one Worker
/// (E2EE frame transforms) is a file served here, so `worker-src 'self'`
/// and no `blob:`: no script the page assembles at run time can become one.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; worker-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One file under `/assets/`; `name` is its path there (`e2ee/…` for the
/// end-to-end encryption modules, which import each other by relative path).
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
    js("e2ee/session.js", include_str!("../web/e2ee/session.js")),
    js("e2ee/worker.js", include_str!("../web/e2ee/worker.js")),
    js("e2ee/sframe.js", include_str!("../web/e2ee/sframe.js")),
    js("e2ee/hpke.js", include_str!("../web/e2ee/hpke.js")),
    js("e2ee/schedule.js", include_str!("../web/e2ee/schedule.js")),
    js("e2ee/labels.js", include_str!("../web/e2ee/labels.js")),
];

const fn js(name: &'static str, body: &'static str) -> Asset {
    Asset {
        name,
        content_type: "text/javascript; charset=utf-8",
        body,
    }
}

/// The asset called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_e2ee_module_the_page_loads_is_an_asset() {
        // session.js is imported by app.js; it starts worker.js, and the
        // modules import one another: all by relative path under e2ee/.
        for name in [
            "e2ee/session.js",
            "e2ee/worker.js",
            "e2ee/sframe.js",
            "e2ee/hpke.js",
            "e2ee/schedule.js",
            "e2ee/labels.js",
        ] {
            assert!(asset(name).is_some(), "{name}");
        }
        for a in ASSETS.iter().filter(|a| a.name.starts_with("e2ee/")) {
            for line in a.body.lines().filter(|l| l.contains("from \"./")) {
                let Some(dep) = line
                    .split("from \"./")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                else {
                    continue;
                };
                assert!(asset(&format!("e2ee/{dep}")).is_some(), "{}: {dep}", a.name);
            }
        }
    }

    #[test]
    fn workers_come_only_from_this_origin() {
        assert!(CONTENT_SECURITY_POLICY.contains("worker-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("worker-src 'self' blob:"));
    }
}

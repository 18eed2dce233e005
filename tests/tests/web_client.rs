//! The meeting page and its assets come from the binary itself, under a
//! Content-Security-Policy that lets the page reach this origin only.

use stamma_tests::TestServer;

async fn get(url: &str) -> anyhow::Result<reqwest::Response> {
    Ok(reqwest::Client::new().get(url).send().await?)
}

#[tokio::test]
async fn room_page_and_every_asset_it_loads_are_served_by_the_binary() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let page = get(&format!("{}/r/hearing", srv.base)).await?;
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(
        !csp.contains("http"),
        "the policy names no other origin: {csp}"
    );
    assert_eq!(
        page.headers()
            .get("referrer-policy")
            .and_then(|v| v.to_str().ok()),
        Some("no-referrer"),
        "the token in the page's URL must not leak in a Referer"
    );
    let html = page.text().await?;
    // Every asset the page names (and the modules app.js imports) is served
    // with its type; nothing is fetched from anywhere else.
    let mut names: Vec<String> = html
        .split("\"/assets/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(names.iter().any(|n| n == "app.js") && names.iter().any(|n| n == "style.css"));
    let app = get(&format!("{}/assets/app.js", srv.base))
        .await?
        .text()
        .await?;
    for line in app.lines().filter(|l| l.starts_with("import ")) {
        if let Some(module) = line.split("\"./").nth(1).and_then(|s| s.split('"').next()) {
            names.push(module.to_owned());
        }
    }
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        let r = get(&format!("{}/assets/{name}", srv.base)).await?;
        assert_eq!(r.status(), 200, "{name}");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let want = if name.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(ct.starts_with(want), "{name}: {ct}");
        let body = r.text().await?;
        assert!(
            !body.contains("https://"),
            "{name} refers to another origin"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_assets_and_path_tricks_are_not_found() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    for path in [
        "/assets/nope.js",
        "/assets/..%2FCargo.toml",
        "/assets/%2e%2e%2fsrc%2fmain.rs",
        "/assets/",
    ] {
        let r = get(&format!("{}{path}", srv.base)).await?;
        assert_eq!(r.status(), 404, "{path}");
    }
    Ok(())
}

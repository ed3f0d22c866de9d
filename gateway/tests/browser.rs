//! The chat page in a real headless Chromium (driven through chromedriver): type a
//! message, send it, and watch the reply appear. The test plays the responder: it
//! writes the reply events to `model_responses` for the message the page posted (read
//! back from Kafka, or from the ids the page shows).
//!
//! What a user would notice is checked from the page's DOM: Markdown rendered, hostile
//! text inert, a redelivered reply's `reset` and a failed reply shown, reconnecting
//! across a gateway restart without losing or repeating text, and sign-in on 401.
//! `cargo nextest run -p gateway --test browser --run-ignored only` instead writes the
//! README's screenshots (docs/img/).

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use fantoccini::{key::Key, Client, ClientBuilder, Locator};
use platform::events::{ReplyBody, UserMessage};
use serde_json::{json, Value};
use testkit::{free_port, http_status, kafka::Kafka, port_open, require_env, Process, QdrantServer, Signal};
use uuid::Uuid;

/// A headless Chromium session, with its chromedriver.
struct Browser {
    client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        require_env(&["CHROMEDRIVER", "CHROMIUM"]).expect("browser");
        let driver_port = free_port().expect("port");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(std::env::var("CHROMEDRIVER").unwrap());
        command.arg(format!("--port={driver_port}"));
        let mut driver =
            Process::spawn("chromedriver", command, profile.path().join("chromedriver.log"), Signal::SIGTERM)
                .expect("chromedriver");
        driver
            .wait_until(Duration::from_secs(20), || port_open(driver_port))
            .expect("chromedriver listening");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1100,720", "--force-color-profile=srgb",
                    format!("--user-data-dir={}", profile.path().join("chrome").display()),
                ]
            }
        });
        let client = ClientBuilder::native()
            .capabilities(capabilities.as_object().expect("object").clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a browser session");
        Self { client, _driver: driver, _profile: profile }
    }

    /// Ends the session (the browser quits; chromedriver stops on drop).
    async fn close(self) {
        self.client.close().await.expect("close the browser");
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// What the page shows, for failure messages.
    async fn page_state(&self) -> String {
        self.js("return 'log: ' + document.getElementById('log').innerHTML + '\\n error: ' + \
             document.getElementById('error').textContent + '\\n sign-in: ' + \
             document.getElementById('signin-message').textContent + '\\n url: ' + location.href;")
            .await
            .to_string()
    }

    /// Polls `script` (a function body returning a string) until it returns `expected`.
    async fn wait_for(&self, script: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.js(script).await;
            if last.as_str() == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{script}\n returned {last}, expected {expected:?}; the page: {}", self.page_state().await);
    }

    /// Types `text` into the message box and clicks Send.
    async fn type_and_click_send(&self, text: &str) {
        let input = self.client.find(Locator::Id("message")).await.expect("input");
        input.send_keys(text).await.expect("type");
        self.client.find(Locator::Id("send")).await.expect("button").click().await.expect("click");
    }

    /// Sends `text` with `send` (a click or Enter) and waits for the gateway's 202:
    /// the message as the responder would get it (ids from the page).
    async fn send(&self, text: &str, user: &str) -> UserMessage {
        let count = "return String(document.querySelectorAll('.bubble.user[data-message-id]').length);";
        let before: usize = self.js(count).await.as_str().unwrap().parse().unwrap();
        self.type_and_click_send(text).await;
        self.wait_for(count, &(before + 1).to_string()).await;
        let ids = self
            .js("const u = document.querySelectorAll('.bubble.user[data-message-id]'); \
                 return [new URLSearchParams(location.search).get('c'), u[u.length - 1].dataset.messageId];")
            .await;
        let mut message =
            UserMessage::new(ids[0].as_str().unwrap().parse().expect("?c= in the URL"), user, text);
        message.message_id = ids[1].as_str().unwrap().parse().expect("message id");
        message
    }

    /// The text of the reply to `message`, as shown.
    fn reply_text(message: &UserMessage) -> String {
        format!(
            "const r = document.querySelector('.assistant[data-message-id=\"{}\"]'); return r ? r.textContent : '';",
            message.message_id
        )
    }

    fn reply_done(message: &UserMessage) -> String {
        format!(
            "const r = document.querySelector('.assistant[data-message-id=\"{}\"]'); return r ? r.dataset.done : '';",
            message.message_id
        )
    }
}

/// A reply of one token (the whole text) and its `done`.
fn whole_reply(text: &str) -> Vec<ReplyBody> {
    reply_bodies(&[text])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_renders_a_streamed_reply_token_by_token() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let browser = Browser::start().await;
    let client = &browser.client;

    client.goto(&gateway.url("/")).await.expect("open the page");
    browser.type_and_click_send("What is the capital of France?").await;

    // Play the responder: find the message the page posted.
    let message = kafka.first_user_message("browser-test").await;
    assert_eq!(message.text, "What is the capital of France?");
    assert_eq!(message.user_id, "anonymous");

    let reply = Browser::reply_text(&message);
    let attempt = Uuid::new_v4();
    let words = ["The capital", " of France", " is Paris."];
    let bodies = reply_bodies(&words);
    // One token at a time, checking the page shows each before the next is sent.
    let mut shown = String::new();
    for (body, word) in bodies.iter().zip(words) {
        kafka.reply(&message, attempt, vec![body.clone()]).await;
        shown.push_str(word);
        browser.wait_for(&reply, &shown).await;
    }
    // The send button waits for the reply.
    assert_eq!(browser.js("return document.getElementById('send').disabled;").await, json!(true));
    kafka.reply(&message, attempt, vec![bodies[words.len()].clone()]).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;
    browser.wait_for(&reply, "The capital of France is Paris.").await;
    let user_bubble =
        client.find(Locator::Css(".bubble.user")).await.expect("user bubble").text().await.expect("text");
    assert_eq!(user_bubble, "What is the capital of France?");
    assert_eq!(browser.js("return document.getElementById('send').disabled;").await, json!(false));
    // The conversation is in the URL and in the sidebar.
    let url = client.current_url().await.expect("url");
    assert_eq!(url.query(), Some(format!("c={}", message.conversation_id).as_str()));
    let sidebar =
        browser.js("return document.querySelector('#conversations .current .title').textContent;").await;
    assert_eq!(sidebar, json!("What is the capital of France?"));
    // This gateway has no history (no QDRANT_URL): the sidebar says so quietly, and
    // chatting worked regardless.
    let notice = browser
        .js("const n = document.getElementById('history-notice'); return n.hidden ? '' : n.textContent;")
        .await;
    assert!(notice.as_str().unwrap().contains("chatting still works"), "{notice}");

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_is_rendered_as_markdown_and_enter_sends() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&gateway.url("/")).await.expect("open the page");

    // Shift+Enter is a new line, Enter sends.
    let input = client.find(Locator::Id("message")).await.expect("input");
    let shift_enter =
        format!("{}{}{}", char::from(Key::Shift), char::from(Key::Enter), char::from(Key::Null));
    input.send_keys(&format!("Sort a list{shift_enter}in Rust, please")).await.expect("type");
    assert_eq!(
        browser.js("return document.getElementById('message').value;").await,
        json!("Sort a list\nin Rust, please")
    );
    assert_eq!(browser.js("return document.querySelectorAll('.bubble.user').length;").await, json!(0));
    input.send_keys(&char::from(Key::Enter).to_string()).await.expect("Enter");
    let message = kafka.first_user_message("browser-markdown").await;
    assert_eq!(message.text, "Sort a list\nin Rust, please");

    let answer = "Use **`sort`** on a *mutable* vector:\n\n\
                  ```rust\nlet mut v = vec![3, 1, 2];\nv.sort();\nassert_eq!(v, [1, 2, 3]);\n```\n\n\
                  Steps:\n1. Make it `mut`\n2. Call `sort()`\n   - stable\n   - O(n log n)\n\n\
                  See [the docs](https://doc.rust-lang.org/std/vec/struct.Vec.html#method.sort).";
    kafka.reply(&message, Uuid::new_v4(), whole_reply(answer)).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;

    let shown = browser
        .js("const r = document.querySelector('.bubble.assistant'); \
             const q = (s) => [...r.querySelectorAll(s)].map((e) => e.textContent); \
             const a = r.querySelector('a'); \
             return { \
               code: q('pre code'), language: r.querySelector('pre code').dataset.language, \
               strong: q('strong'), em: q('em'), inline: q(':not(pre) > code'), \
               ol: q('ol > li').length, nested: q('ol > li > ul > li'), \
               link: [a.href, a.target, a.rel, a.textContent], \
               paragraphs: r.querySelectorAll('p').length };")
        .await;
    assert_eq!(shown["code"], json!(["let mut v = vec![3, 1, 2];\nv.sort();\nassert_eq!(v, [1, 2, 3]);"]));
    assert_eq!(shown["language"], json!("rust"));
    assert_eq!(shown["strong"], json!(["sort"]));
    assert_eq!(shown["em"], json!(["mutable"]));
    assert_eq!(shown["inline"], json!(["sort", "mut", "sort()"]));
    assert_eq!(shown["ol"], json!(2));
    assert_eq!(shown["nested"], json!(["stable", "O(n log n)"]));
    assert_eq!(
        shown["link"],
        json!([
            "https://doc.rust-lang.org/std/vec/struct.Vec.html#method.sort",
            "_blank",
            "noopener noreferrer nofollow",
            "the docs"
        ])
    );
    assert_eq!(shown["paragraphs"], json!(3));
    // The user's own text is shown as typed, not as Markdown.
    assert_eq!(
        browser.js("return document.querySelector('.bubble.user').textContent;").await,
        json!("Sort a list\nin Rust, please")
    );
    browser.close().await;
}

/// Text that would run script or load something if it were ever treated as HTML or as
/// a link target.
const HOSTILE: &str = "<img src=x onerror=alert(1)> [x](javascript:alert(1)) \
                       <script>alert(2)</script> ![i](https://example.invalid/p.png) \
                       [d](data:text/html,<b>x</b>) <iframe src=https://example.invalid></iframe>";

#[tokio::test(flavor = "multi_thread")]
async fn hostile_text_in_a_message_and_a_reply_stays_inert() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&gateway.url("/")).await.expect("open the page");

    let message = browser.send(HOSTILE, "anonymous").await;
    let reply = format!("**Echo:** {HOSTILE}\n\n- {HOSTILE}\n\n```html\n{HOSTILE}\n```");
    kafka.reply(&message, Uuid::new_v4(), whole_reply(&reply)).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;

    let found = browser
        .js(
            "const all = (s) => document.querySelectorAll(s); \
             return { \
               elements: all('img, script:not([src]), iframe, object, embed, [onerror], [src]:not(script)').length, \
               links: [...all('#log a')].map((a) => a.getAttribute('href')), \
               user: document.querySelector('.bubble.user').textContent, \
               reply: document.querySelector('.bubble.assistant').textContent, \
               title: document.querySelector('#conversations .title').textContent };",
        )
        .await;
    assert_eq!(
        found["elements"],
        json!(0),
        "an element that runs or loads something: {}",
        browser.page_state().await
    );
    // The image became a plain https link (never loaded), like the iframe's URL; nothing
    // else became a link (not the javascript: nor the data: one).
    assert_eq!(
        found["links"],
        json!([
            "https://example.invalid/p.png",
            "https://example.invalid/",
            "https://example.invalid/p.png",
            "https://example.invalid/"
        ]),
        "{}",
        browser.page_state().await
    );
    assert_eq!(found["user"], json!(HOSTILE), "the user's text is shown exactly as typed");
    let reply_text = found["reply"].as_str().unwrap();
    for inert in ["<img src=x onerror=alert(1)>", "[x](javascript:alert(1))", "<script>alert(2)</script>"] {
        assert!(reply_text.contains(inert), "{inert:?} is shown as text: {reply_text:?}");
    }
    assert!(found["title"].as_str().unwrap().starts_with("<img src=x"));
    // No script ran: no dialog is open.
    assert!(client.get_alert_text().await.is_err(), "an alert opened");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_has_a_content_security_policy_and_typed_files() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let http = reqwest::Client::new();
    let page = http.get(gateway.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.split(';').any(|d| d.trim() == directive), "{directive:?} missing from {csp:?}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // Nothing inline that the policy would have to allow.
    let handler_attribute = html.split(" on").skip(1).any(|rest| {
        let name_end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        name_end > 0 && rest[name_end..].starts_with('=')
    });
    assert!(
        !html.contains("<style") && !html.contains(" style=") && !handler_attribute,
        "inline code in the page"
    );
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script type="module" src="/app.js"></script>"#));
    for (path, kind) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/markdown.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let file = http.get(gateway.url(path)).send().await.expect("GET a page file");
        assert_eq!(file.status(), 200, "{path}");
        assert_eq!(file.headers()["content-type"], kind, "{path}");
        assert_eq!(file.headers()["x-content-type-options"], "nosniff", "{path}");
        let text = file.text().await.unwrap();
        for sink in
            ["innerHTML =", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"]
        {
            assert!(!text.contains(sink), "{path} uses {sink}: HTML or code from strings");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_reply_shows_its_reset_and_a_failed_reply_its_code() {
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let browser = Browser::start().await;
    browser.client.goto(&gateway.url("/")).await.expect("open the page");

    let message = browser.send("Tell me a joke", "anonymous").await;
    let reply = Browser::reply_text(&message);
    kafka
        .reply(&message, Uuid::new_v4(), vec![ReplyBody::Token { seq: 0, delta: "First try, cut".into() }])
        .await;
    browser.wait_for(&reply, "First try, cut").await;
    // The message was redelivered and answered again: a second attempt's tokens.
    let second = reply_bodies(&["Why did", " the crab", " never share?"]);
    kafka.reply(&message, Uuid::new_v4(), second).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;
    browser.wait_for(&reply, "Why did the crab never share?").await;
    let note = browser.js("const n = document.querySelector('.turn.assistant .note'); return [n.hidden, n.dataset.kind, n.textContent];").await;
    assert_eq!(note[0], json!(false), "the reset is shown");
    assert_eq!(note[1], json!("reset"));
    assert!(note[2].as_str().unwrap().contains("answered anew"), "{note}");

    let failing = browser.send("And another", "anonymous").await;
    kafka
        .reply(
            &failing,
            Uuid::new_v4(),
            vec![
                ReplyBody::Token { seq: 0, delta: "Half a".into() },
                ReplyBody::Error {
                    code: "llm_unavailable".into(),
                    message: "the model did not answer".into(),
                },
            ],
        )
        .await;
    browser.wait_for(&Browser::reply_done(&failing), "true").await;
    browser
        .wait_for(
            &Browser::reply_text(&failing),
            "⚠ The reply failed: the model did not answer (llm_unavailable)",
        )
        .await;
    let failed = format!(
        "return document.querySelector('.assistant[data-message-id=\"{}\"]').classList.contains('failed');",
        failing.message_id
    );
    assert_eq!(browser.js(&failed).await, json!(true));
    // A failed reply frees the send button.
    assert_eq!(browser.js("return document.getElementById('send').disabled;").await, json!(false));
    browser.close().await;
}

/// Starts `gateway serve` on `port`, as `common::Gateway::start` does (the same port,
/// so that the page's URL stays valid across a restart).
fn gateway_on(kafka: &Kafka, port: u16, dir: &std::path::Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .arg("serve")
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka.broker.bootstrap_servers())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{}", free_port().expect("port")))
        .env("JWT_SECRET", JWT_SECRET)
        .env("CONVERSATION_KEY", CONVERSATION_KEY)
        .env("SSE_HEARTBEAT_SECS", "1")
        .env("AUTH", "disabled");
    let mut process =
        Process::spawn("gateway", command, dir.join("gateway-again.log"), Signal::SIGTERM).expect("spawn");
    process
        .wait_until(Duration::from_secs(30), || http_status(port, "/ready") == Some(200))
        .expect("gateway ready");
    process
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_reconnects_after_the_gateway_restarts_without_losing_text() {
    let kafka = Kafka::start(2).await;
    let mut gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);
    let port: u16 = gateway.base.rsplit(':').next().unwrap().parse().unwrap();
    let browser = Browser::start().await;
    browser.client.goto(&gateway.url("/")).await.expect("open the page");
    let state = "return document.getElementById('connection').dataset.state;";
    let banner = "const c = document.getElementById('connection'); return c.hidden ? '' : c.textContent;";

    let message = browser.send("Count to three", "anonymous").await;
    let reply = Browser::reply_text(&message);
    browser.wait_for(state, "live").await;
    let attempt = Uuid::new_v4();
    let bodies = reply_bodies(&["one,", " two,", " three"]);
    kafka.reply(&message, attempt, bodies[..1].to_vec()).await;
    browser.wait_for(&reply, "one,").await;

    // A rollout: the gateway stops (its streams end with `shutdown`) and comes back.
    gateway.process.stop_with(Signal::SIGTERM, Duration::from_secs(15)).expect("gateway stops");
    browser.wait_for(state, "reconnecting").await;
    browser.wait_for(banner, "Reconnecting to the gateway…").await;
    let dir = tempfile::tempdir().expect("dir");
    gateway.process = gateway_on(&kafka, port, dir.path());
    browser.wait_for(state, "live").await;
    browser.wait_for(banner, "").await;

    // The rest of the reply reaches the page once, after the part shown before.
    kafka.reply(&message, attempt, bodies[1..].to_vec()).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;
    browser.wait_for(&reply, "one, two, three").await;
    // And the page keeps working against the new process.
    let next = browser.send("Again", "anonymous").await;
    kafka.reply(&next, Uuid::new_v4(), whole_reply("Once more: one, two, three")).await;
    browser.wait_for(&Browser::reply_text(&next), "Once more: one, two, three").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_valid_token_the_page_says_so_and_a_token_from_the_url_signs_in() {
    let kafka = Kafka::start(2).await;
    // JWT on (the default).
    let gateway = Gateway::start(&kafka, &[]);
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&gateway.url("/")).await.expect("open the page");
    // What the sign-in panel says: hidden, asking for a token, or refusing the one given.
    let sign_in = "const s = document.getElementById('signin'); \
                   const m = document.getElementById('signin-message').textContent; \
                   return s.hidden ? 'hidden' : m.startsWith('Sign-in needed') ? 'asked' \
                     : m.startsWith('The gateway refused your token') ? 'refused' : m;";
    let message_text = "return document.getElementById('signin-message').textContent;";

    // No token: the message is refused and the page asks for one.
    browser.type_and_click_send("Hello?").await;
    browser.wait_for(sign_in, "asked").await;
    let asked = browser.js(message_text).await;
    assert!(asked.as_str().unwrap().contains("401 unauthorized"), "{asked}");
    assert_eq!(browser.js("return document.querySelectorAll('.bubble.user').length;").await, json!(0));

    // A wrong token, pasted: refused, and said so.
    client
        .find(Locator::Id("token"))
        .await
        .expect("token input")
        .send_keys("not-a-token")
        .await
        .expect("type");
    client
        .find(Locator::Css("#signin-form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    assert_eq!(browser.js("return sessionStorage.getItem('token');").await, json!("not-a-token"));
    client.find(Locator::Id("send")).await.expect("button").click().await.expect("click");
    browser.wait_for(sign_in, "refused").await;

    // An expired one, from a sign-in link opened afresh: taken from the URL, refused.
    let expired = token_with("alice", -3600, JWT_SECRET);
    client.goto("about:blank").await.expect("leave");
    client.goto(&gateway.url(&format!("/#token={expired}"))).await.expect("open with a token");
    let kept = "return location.hash + '|' + sessionStorage.getItem('token');";
    browser.wait_for(kept, &format!("|{expired}")).await;
    browser.type_and_click_send("Hello?").await;
    browser.wait_for(sign_in, "refused").await;

    // A valid one, from a sign-in link opened in the same tab (only the fragment
    // changes): kept in the tab, removed from the URL, and the message goes through.
    let valid = token("alice");
    browser.js(&format!("location.hash = 'token={valid}'; return '';")).await;
    browser.wait_for(kept, &format!("|{valid}")).await;
    browser.wait_for(sign_in, "hidden").await;
    assert_eq!(browser.js("return location.href;").await, json!(gateway.url("/")));
    client.find(Locator::Id("message")).await.expect("input").clear().await.expect("clear");
    let message = browser.send("Hello, it is Alice", "alice").await;
    let posted = kafka.first_user_message("browser-auth").await;
    assert_eq!((posted.user_id.as_str(), posted.message_id), ("alice", message.message_id));
    // The stream is authorised with the same token (a header, not the URL).
    kafka.reply(&posted, Uuid::new_v4(), whole_reply("Hi Alice!")).await;
    browser.wait_for(&Browser::reply_text(&message), "Hi Alice!").await;
    assert_eq!(browser.js(sign_in).await, json!("hidden"));
    browser.close().await;
}

/// The stack behind the page's history: a broker, the Qdrant engine server, the real
/// memory worker storing every turn, and a gateway reading history from that Qdrant.
struct WithHistory {
    kafka: Kafka,
    gateway: Gateway,
    _memory: Process,
    _qdrant: QdrantServer,
    _dir: tempfile::TempDir,
}

impl WithHistory {
    async fn start() -> Self {
        require_env(&["EMBED_MODEL_DIR", "QDRANT_DEV_SERVER_BIN"]).expect("history's dependencies");
        let model_dir = std::env::var("EMBED_MODEL_DIR").unwrap();
        let (kafka, qdrant) = (Kafka::start(2).await, QdrantServer::start().expect("qdrant"));
        let dir = tempfile::tempdir().expect("dir");
        let memory = memory_worker(&kafka, &qdrant.url(), &model_dir, dir.path(), &[]);
        let gateway = Gateway::start(
            &kafka,
            &[
                ("AUTH", "disabled"),
                ("QDRANT_URL", qdrant.url().as_str()),
                ("EMBED_MODEL_DIR", model_dir.as_str()),
            ],
        );
        Self { kafka, gateway, _memory: memory, _qdrant: qdrant, _dir: dir }
    }

    /// Waits until the conversation's history holds `count` complete turns (the memory
    /// worker stores them a moment after they pass through Kafka).
    async fn wait_stored(&self, conversation_id: Uuid, count: usize) {
        let client = reqwest::Client::new();
        let url = self.gateway.url(&format!("/conversations/{conversation_id}/messages"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body: Value = client.get(&url).send().await.expect("history").json().await.expect("JSON");
            let complete = body["messages"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["status"] == "complete").count());
            if complete >= count {
                return;
            }
            assert!(Instant::now() < deadline, "{count} turns not stored within 30 s: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `text` from the page and answers it with `answer`, both stored.
    async fn exchange(&self, browser: &Browser, text: &str, answer: &str) -> UserMessage {
        let message = browser.send(text, "anonymous").await;
        self.kafka.reply(&message, Uuid::new_v4(), whole_reply(answer)).await;
        browser.wait_for(&Browser::reply_done(&message), "true").await;
        message
    }
}

/// The texts of the turns shown, in order.
const TURNS: &str =
    "return [...document.querySelectorAll('#log .bubble')].map((b) => b.textContent).join(' | ');";
/// The sidebar's titles, top to bottom, the current one marked.
const SIDEBAR: &str = "return [...document.querySelectorAll('#conversations li')]\
                       .map((li) => (li.classList.contains('current') ? '*' : '') + li.querySelector('.title').textContent)\
                       .join(' | ');";

#[tokio::test(flavor = "multi_thread")]
async fn history_comes_back_on_reload_and_on_switching_and_deleting_is_final() {
    let stack = WithHistory::start().await;
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&stack.gateway.url("/")).await.expect("open the page");

    let first = stack.exchange(&browser, "What is Rust?", "A *systems* language.").await;
    client.find(Locator::Id("new-chat")).await.expect("new chat").click().await.expect("click");
    browser.wait_for("return location.search;", "").await;
    let second = stack.exchange(&browser, "And Kafka?", "A distributed **log**.").await;
    assert_ne!(first.conversation_id, second.conversation_id);
    stack.wait_stored(first.conversation_id, 2).await;
    stack.wait_stored(second.conversation_id, 2).await;

    // Reload: the conversation in the URL comes back from history, the sidebar lists both.
    client.refresh().await.expect("reload");
    browser.wait_for(TURNS, "And Kafka? | A distributed log.").await;
    browser.wait_for(SIDEBAR, "*And Kafka? | What is Rust?").await;
    assert_eq!(
        browser.js("return document.querySelector('.bubble.assistant strong').textContent;").await,
        json!("log"),
        "history is rendered as Markdown too"
    );

    // Switch from the sidebar: the URL and the turns follow; Back returns.
    client
        .find(Locator::Css("#conversations li:nth-child(2) .open"))
        .await
        .expect("item")
        .click()
        .await
        .expect("click");
    browser.wait_for(TURNS, "What is Rust? | A systems language.").await;
    browser.wait_for(SIDEBAR, "And Kafka? | *What is Rust?").await;
    assert_eq!(
        client.current_url().await.unwrap().query(),
        Some(format!("c={}", first.conversation_id).as_str())
    );
    client.back().await.expect("back");
    browser.wait_for(TURNS, "And Kafka? | A distributed log.").await;

    // The switched-to conversation goes on streaming: a new message in it is answered.
    let third = browser.send("Partitions?", "anonymous").await;
    assert_eq!(third.conversation_id, second.conversation_id);
    stack.kafka.reply(&third, Uuid::new_v4(), whole_reply("Ordered per key.")).await;
    browser.wait_for(&Browser::reply_text(&third), "Ordered per key.").await;

    // Delete the first conversation (confirmed in the page's dialog): gone for good.
    client
        .find(Locator::Css("#conversations li:nth-child(2) .delete"))
        .await
        .expect("delete")
        .click()
        .await
        .expect("click");
    browser.wait_for("return String(document.getElementById('confirm').open);", "true").await;
    client.find(Locator::Id("confirm-ok")).await.expect("confirm").click().await.expect("click");
    browser.wait_for(SIDEBAR, "*And Kafka?").await;
    stack.wait_stored(second.conversation_id, 4).await;
    client.refresh().await.expect("reload");
    browser.wait_for(TURNS, "And Kafka? | A distributed log. | Partitions? | Ordered per key.").await;
    browser.wait_for(SIDEBAR, "*And Kafka?").await;
    // Its old URL shows nothing of it.
    client.goto(&stack.gateway.url(&format!("/?c={}", first.conversation_id))).await.expect("open");
    browser.wait_for("return document.getElementById('log').dataset.state;", "loaded").await;
    assert_eq!(browser.js(TURNS).await, json!(""));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_still_streaming_on_reload_is_shown_as_such_and_completes() {
    let stack = WithHistory::start().await;
    let browser = Browser::start().await;
    browser.client.goto(&stack.gateway.url("/")).await.expect("open the page");

    let message = browser.send("Write a haiku", "anonymous").await;
    let attempt = Uuid::new_v4();
    let bodies = reply_bodies(&["Old pond,", " a frog jumps", " in."]);
    stack.kafka.reply(&message, attempt, bodies[..1].to_vec()).await;
    browser.wait_for(&Browser::reply_text(&message), "Old pond,").await;
    stack.wait_stored(message.conversation_id, 1).await;

    browser.client.refresh().await.expect("reload");
    // The stored question, and the reply resumed from the stream, not a half text from history.
    browser.wait_for(TURNS, "Write a haiku | Old pond,").await;
    stack.kafka.reply(&message, attempt, bodies[1..].to_vec()).await;
    browser.wait_for(&Browser::reply_done(&message), "true").await;
    browser.wait_for(TURNS, "Write a haiku | Old pond, a frog jumps in.").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_panel_shows_what_is_remembered_and_forget_me_erases_it() {
    let stack = WithHistory::start().await;
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&stack.gateway.url("/")).await.expect("open the page");
    let message = stack.exchange(&browser, "My cat is called Miso", "Miso is a lovely name.").await;
    stack.wait_stored(message.conversation_id, 2).await;

    let memories = "return [...document.querySelectorAll('#memory-list .memory-text')].map((m) => m.textContent).sort().join(' | ');";
    client.find(Locator::Id("open-memories")).await.expect("button").click().await.expect("click");
    browser.wait_for(memories, "Miso is a lovely name. | My cat is called Miso").await;
    // A search ranks by similarity and shows the scores.
    client.find(Locator::Id("memory-q")).await.expect("search").send_keys("pets").await.expect("type");
    client.find(Locator::Css("#memory-form button")).await.expect("button").click().await.expect("click");
    browser.wait_for("return String(document.querySelectorAll('#memory-list .score').length);", "2").await;

    // Forget me, confirmed: everything goes, in the panel, the sidebar and the conversation.
    client.find(Locator::Id("forget-me")).await.expect("button").click().await.expect("click");
    browser.wait_for("return String(document.getElementById('confirm').open);", "true").await;
    client.find(Locator::Id("confirm-ok")).await.expect("confirm").click().await.expect("click");
    browser
        .wait_for(
            "return document.getElementById('memory-status').textContent.startsWith('Forgotten') ? 'forgotten' \
             : document.getElementById('memory-status').textContent;",
            "forgotten",
        )
        .await;
    browser.wait_for(SIDEBAR, "").await;
    browser.wait_for("return location.search;", "").await;
    // And it stays gone after a reload.
    client.refresh().await.expect("reload");
    client.find(Locator::Id("open-memories")).await.expect("button").click().await.expect("click");
    browser
        .wait_for(
            "return document.getElementById('memory-status').textContent;",
            "Nothing is remembered about you.",
        )
        .await;
    browser.wait_for(SIDEBAR, "").await;
    browser.close().await;
}

/// Writes the README's screenshots (docs/img/): `cargo nextest run -p gateway --test
/// browser --run-ignored only`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes docs/img/*.png; run on purpose"]
async fn screenshots_for_the_readme() {
    let stack = WithHistory::start().await;
    let browser = Browser::start().await;
    let client = &browser.client;
    client.goto(&stack.gateway.url("/")).await.expect("open the page");
    let chats = [
        (
            "Plan a weekend in Lisbon",
            "Day 1: Alfama and a *fado* evening.\nDay 2: Belém, then sunset at a miradouro.",
        ),
        (
            "What does KEDA scale on?",
            "On **events**: here, Kafka consumer-group lag.\n\n- 0 → 1 when lag > `activationLagThreshold`\n- then `ceil(lag / lagThreshold)` replicas",
        ),
    ];
    for (question, answer) in chats {
        client.find(Locator::Id("new-chat")).await.expect("new chat").click().await.expect("click");
        stack.exchange(&browser, question, answer).await;
    }
    let light =
        stack.exchange(&browser, "And back to zero?", "After `cooldownPeriod` with no lag, yes.").await;
    stack.wait_stored(light.conversation_id, 4).await;
    client.refresh().await.expect("reload");
    browser.wait_for("return String(document.querySelectorAll('#conversations li').length);", "2").await;
    browser.wait_for("return String(document.querySelectorAll('#log .bubble').length);", "4").await;
    let shot = |name: &str, png: Vec<u8>| {
        let path = testkit::repo_root().join("docs/img").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).expect("docs/img");
        assert!(png.len() < 200_000, "{name} is {} bytes", png.len());
        std::fs::write(&path, png).expect("write the screenshot");
    };
    shot("chat-page.png", client.screenshot().await.expect("screenshot"));

    client.find(Locator::Id("new-chat")).await.expect("new chat").click().await.expect("click");
    let answer = "Sort it in place; `sort` is stable:\n\n```rust\nlet mut scores = vec![42, 7, 19];\nscores.sort();\nassert_eq!(scores, [7, 19, 42]);\n```\n\nFor descending order use `sort_by(|a, b| b.cmp(a))`, or `sort_unstable` when ties do not matter.";
    stack.exchange(&browser, "How do I sort a Vec in Rust?", answer).await;
    shot("chat-code-answer.png", client.screenshot().await.expect("screenshot"));
    browser.close().await;
}

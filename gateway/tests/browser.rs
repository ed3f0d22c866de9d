//! The chat page in a real headless Chromium (driven through chromedriver): type a
//! message, click Send, and watch the reply appear token by token. The test plays the
//! responder: it reads the posted message from Kafka and writes the reply events.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use fantoccini::{ClientBuilder, Locator};
use platform::events::ReplyBody;
use serde_json::json;
use testkit::{free_port, kafka::Kafka, port_open, require_env, Process, Signal};
use uuid::Uuid;

/// Polls `script` (a JavaScript function body that returns a string) until it returns `expected`.
async fn wait_for_text(client: &fantoccini::Client, script: &str, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        last = client.execute(script, vec![]).await.expect("script").as_str().unwrap_or_default().to_string();
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = client
        .execute("return document.getElementById('log').innerHTML + ' | error: ' + document.getElementById('error').textContent;", vec![])
        .await
        .map(|v| v.to_string())
        .unwrap_or_default();
    panic!("page shows {last:?}, expected {expected:?}; the conversation: {page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_page_renders_a_streamed_reply_token_by_token() {
    require_env(&["CHROMEDRIVER", "CHROMIUM"]).expect("browser");
    let kafka = Kafka::start(2).await;
    let gateway = Gateway::start(&kafka, &[("AUTH", "disabled")]);

    let driver_port = free_port().expect("port");
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = Command::new(std::env::var("CHROMEDRIVER").unwrap());
    command.arg(format!("--port={driver_port}"));
    let mut driver =
        Process::spawn("chromedriver", command, profile.path().join("chromedriver.log"), Signal::SIGTERM)
            .expect("chromedriver");
    driver.wait_until(Duration::from_secs(20), || port_open(driver_port)).expect("chromedriver listening");

    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": std::env::var("CHROMIUM").unwrap(),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", format!("--user-data-dir={}", profile.path().join("chrome").display()),
            ]
        }
    });
    let client = ClientBuilder::native()
        .capabilities(capabilities.as_object().expect("object").clone())
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a browser session");

    client.goto(&gateway.url("/")).await.expect("open the page");
    client
        .find(Locator::Id("message"))
        .await
        .expect("input")
        .send_keys("What is the capital of France?")
        .await
        .expect("type");
    client.find(Locator::Id("send")).await.expect("button").click().await.expect("click");

    // Play the responder: find the message the page posted.
    let message = kafka.first_user_message("browser-test").await;
    assert_eq!(message.text, "What is the capital of France?");
    assert_eq!(message.user_id, "anonymous");

    let reply = "const r = document.querySelector('.assistant'); return r ? r.textContent : '';";
    let attempt = Uuid::new_v4();
    let words = ["The capital", " of France", " is Paris."];
    let bodies = reply_bodies(&words);
    // One token at a time, checking the page shows each before the next is sent.
    let mut shown = String::new();
    for (body, word) in bodies.iter().zip(words) {
        kafka.reply(&message, attempt, vec![body.clone()]).await;
        shown.push_str(word);
        wait_for_text(&client, reply, &shown).await;
    }
    kafka.reply(&message, attempt, vec![bodies[words.len()].clone()]).await;
    wait_for_text(&client, "return document.querySelector('.assistant').dataset.done;", "true").await;
    wait_for_text(&client, reply, "The capital of France is Paris.").await;
    let user_bubble =
        client.find(Locator::Css(".user")).await.expect("user bubble").text().await.expect("text");
    assert_eq!(user_bubble, "What is the capital of France?");
    assert!(matches!(bodies.last(), Some(ReplyBody::Done { .. })));

    client.close().await.expect("close the browser");
}

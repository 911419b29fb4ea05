//! The creator's control room (issue 17, items 1 and 3): a Telegram
//! Business creator's private chat with the bot gets a welcome when they
//! connect it and a note when they turn it off; `/mode`, `/pause`,
//! `/resume`, `/fans` and `/persona fans` choose what the bot does for their
//! fans, are stored before "done" and survive a restart; anyone without a
//! connection is told so, and a disallowed owner's connection is ignored.

use std::sync::Arc;

use llmgram::texts::{Locales, Texts, fill};
use llmgram_fakes::{BusinessConn, button_data, button_labels};

use crate::common::Harness;

/// The creator (a bot admin: `business.allowed_owner_ids` is empty).
const OWNER: u64 = 5000;
/// Connects the bot but may not.
const STRANGER: u64 = 5001;
/// Has no connection at all.
const NOBODY: i64 = 42;
/// A fan of the creator, by chat id.
const FAN: i64 = 6001;

const CONFIG: &str = "admin_ids = [5000]\nbusiness.enabled = true\n";

fn english() -> Arc<Texts> {
    Arc::clone(Locales::load().unwrap().for_language(None))
}

/// Says `text` in `chat` and gives back the `nth` message sent there
/// (1-based: the reply it waits for).
async fn ask(h: &Harness, chat: i64, text: &str, nth: usize) -> String {
    h.say(chat, text);
    h.replies(chat, nth).await[nth - 1].text.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_room_sets_modes_pauses_and_personas_that_survive_a_restart() {
    let texts = english();
    let h = Harness::start_with(CONFIG).await;
    let owner = OWNER as i64;

    // Welcomed in the control room once the connection is stored.
    h.telegram.connect_business(BusinessConn::new("c1", OWNER));
    assert_eq!(h.replies(owner, 1).await[0].text, texts.biz_welcome);

    // A disallowed owner's connection is ignored: no welcome, no control.
    h.telegram
        .connect_business(BusinessConn::new("c2", STRANGER));
    let stranger = STRANGER as i64;
    assert_eq!(
        ask(&h, stranger, "/mode auto", 1).await,
        texts.biz_no_connection
    );
    assert_eq!(h.telegram.sent_to(stranger).len(), 1, "no welcome");
    // Counted as a security event (the recorder is the process's: other
    // tests may add to it, never take away).
    let metrics = format!("http://{}/metrics", h.service.ops_addr().expect("ops"));
    let body = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    let denied = body
        .lines()
        .find(|line| {
            line.starts_with("llmgram_security_events_total{kind=\"business_owner_denied\"}")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(denied.is_some_and(|n| n >= 1.0), "{body}");
    assert_eq!(ask(&h, NOBODY, "/fans", 1).await, texts.biz_no_connection);

    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    assert_eq!(
        ask(&h, owner, "/mode auto", next()).await,
        fill(&texts.biz_mode_set, &[("mode", "auto")])
    );
    assert_eq!(
        ask(&h, owner, &format!("/mode {FAN} off"), next()).await,
        fill(&texts.biz_mode_fan_set, &[("fan", "6001"), ("mode", "off")])
    );
    let shown_at = next();
    let shown = ask(&h, owner, "/mode", shown_at).await;
    assert!(shown.starts_with("Mode for your fans: auto."), "{shown}");
    assert!(shown.contains("6001 · off"), "{shown}");

    // The picker under it: draft · auto · off, the current one marked; a
    // press runs `/mode <mode>`.
    let picker = h.telegram.sent_to(owner)[shown_at - 1].clone();
    let markup = picker.reply_markup.as_ref().expect("a picker");
    assert_eq!(button_data(markup), ["bm1:draft", "bm1:auto", "bm1:off"]);
    assert_eq!(button_labels(markup), ["draft", "auto ✓", "off"]);
    h.telegram
        .push_callback(owner, OWNER, picker.message_id, "bm1:draft");
    let k = next();
    assert_eq!(
        h.replies(owner, k).await[k - 1].text,
        fill(&texts.biz_mode_set, &[("mode", "draft")])
    );
    // A stranger's made-up press changes nothing of anyone's.
    h.telegram.push_callback(stranger, STRANGER, 1, "bm1:off");
    assert_eq!(
        h.replies(stranger, 2).await[1].text,
        texts.biz_no_connection
    );
    assert_eq!(
        ask(&h, owner, "/mode auto", next()).await,
        fill(&texts.biz_mode_set, &[("mode", "auto")])
    );
    assert_eq!(
        ask(&h, owner, "/mode sometimes", next()).await,
        texts.biz_mode_usage
    );

    assert_eq!(ask(&h, owner, "/pause", next()).await, texts.biz_paused);
    let shown = ask(&h, owner, "/mode", next()).await;
    assert!(shown.starts_with("Mode for your fans: paused."), "{shown}");
    assert_eq!(ask(&h, owner, "/resume", next()).await, texts.biz_resumed);
    assert_eq!(
        ask(&h, owner, "/pause 6002", next()).await,
        fill(&texts.biz_fan_paused, &[("fan", "6002")])
    );
    let fans = ask(&h, owner, "/fans", next()).await;
    assert!(
        fans.contains("6001 · off") && fans.contains("6002 · off"),
        "{fans}"
    );
    assert_eq!(
        ask(&h, owner, "/resume 6002", next()).await,
        fill(&texts.biz_fan_resumed, &[("fan", "6002")])
    );
    assert_eq!(
        ask(&h, owner, "/persona fans fan_replies", next()).await,
        fill(&texts.biz_persona_fans_set, &[("persona", "fan_replies")])
    );

    // Everything was stored before "done": a restart keeps it.
    let h = h.restart(CONFIG).await;
    let shown = ask(&h, owner, "/mode", next()).await;
    assert!(shown.starts_with("Mode for your fans: auto."), "{shown}");
    assert!(shown.contains("6001 · off"), "{shown}");
    assert!(!shown.contains("6002"), "resumed: {shown}");

    // Turned off: a short note, and the control room has nothing to set.
    h.telegram.disable_business("c1");
    let note = next();
    assert_eq!(
        h.replies(owner, note).await[note - 1].text,
        texts.biz_disabled
    );
    assert_eq!(
        ask(&h, owner, "/mode", next()).await,
        texts.biz_no_connection
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_business_the_control_room_commands_are_unknown() {
    let texts = english();
    let h = Harness::start().await;
    assert_eq!(
        ask(&h, 1, "/mode auto", 1).await,
        fill(&texts.unknown_command, &[("command", "/mode")])
    );
    assert_eq!(
        ask(&h, 1, "/fans", 2).await,
        fill(&texts.unknown_command, &[("command", "/fans")])
    );
    h.stop().await;
}

//! The texts the bot writes itself, in every supported language.
//!
//! The locale files live in `config/locales/` and are compiled in. A locale is
//! chosen from Telegram's `language_code` (`ru`, `ru-RU` → Russian), English
//! otherwise. Placeholders are filled by [`fill`], a single pass that never
//! re-reads what it inserted, so a value containing `{limit}` stays literal.

use std::sync::Arc;

use serde::Deserialize;

/// One language's texts. Deserialising fails when a key is missing, so a
/// locale file without a text cannot load (see the tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each text is described by its key and its use in en.toml
pub struct Texts {
    pub start: String,
    pub help: String,
    pub reset_done: String,
    pub nothing_to_retry: String,
    pub forgotten: String,
    /// Placeholder: `{command}`.
    pub unknown_command: String,
    pub non_text: String,
    pub empty_text: String,
    /// Placeholders: `{length}`, `{limit}`.
    pub too_long: String,
    pub llm_unavailable: String,
    /// Placeholder: `{seconds}`.
    pub llm_unavailable_retry: String,
    pub llm_busy: String,
    /// Placeholder: `{seconds}`.
    pub slow_down: String,
    /// Placeholder: `{seconds}`.
    pub new_users_busy: String,
    pub internal_error: String,
    pub not_allowed: String,
    pub group_admins_only: String,
    pub admin_check_failed: String,
    pub banned: String,
    pub private_bot: String,
    /// Placeholder: `{user}`.
    pub ban_done: String,
    /// Placeholder: `{user}`.
    pub unban_done: String,
    /// Placeholder: `{command}`.
    pub usage_user_id: String,
    /// Placeholders: `{model}`, `{models}`.
    pub model_current: String,
    /// Placeholder: `{model}`.
    pub model_set: String,
    /// Placeholders: `{model}`, `{models}`.
    pub model_unknown: String,
    /// Placeholders: `{live}`, `{pending}`, `{evicted}`, `{session_restarts}`,
    /// `{commits}`, `{turns}`, `{quarantined}`, `{restarts}`, `{providers}`,
    /// `{model}`.
    pub stats: String,
    /// Placeholder: `{command}`.
    pub command_needs_input: String,
    pub menu_help: String,
    pub menu_retry: String,
    pub menu_reset: String,
    pub menu_forget: String,
    /// Placeholder: `{model}`.
    pub model_chosen: String,
    /// Placeholder: `{budget}`.
    pub budget_exceeded: String,
    /// Placeholders: `{tokens}`, `{budget}`.
    pub usage: String,
    /// Placeholder: `{tokens}`.
    pub usage_unlimited: String,
    pub cancelled: String,
    pub nothing_to_cancel: String,
    pub answer_cut: String,
    pub answer_truncated: String,
    pub answer_coming: String,
    /// Placeholders: `{size}`, `{limit}` (megabytes).
    pub media_too_big: String,
    /// Placeholders: `{seconds}`, `{limit}`.
    pub audio_too_long: String,
    pub media_download_failed: String,
    pub media_unsupported: String,
    pub image_unreadable: String,
    pub no_vision: String,
    pub no_vision_notice: String,
    pub no_transcription: String,
    pub transcription_failed: String,
    pub nothing_heard: String,
    pub audio_unreadable: String,
    pub document_unreadable: String,
    pub document_no_text: String,
    /// Placeholder: `{chars}`.
    pub document_truncated: String,
    pub document_lossy: String,
    /// Placeholder: `{count}`.
    pub album_truncated: String,
    /// Placeholders: `{current}`, `{personas}` (one line each).
    pub persona_list: String,
    /// The default persona's line in `/persona` when it is `llm.system_prompt`.
    pub persona_default_description: String,
    /// What `/persona` calls the chat's own system prompt.
    pub persona_custom_name: String,
    /// Placeholder: `{persona}`.
    pub persona_chosen: String,
    /// Placeholders: `{persona}`, `{personas}`.
    pub persona_unknown: String,
    /// Placeholder: `{length}`.
    pub persona_custom_set: String,
    pub persona_custom_empty: String,
    /// Placeholders: `{length}`, `{limit}`.
    pub persona_custom_too_long: String,
    /// Placeholders: `{persona}`, `{prompt}`.
    pub persona_show: String,
    pub persona_default_set: String,
    /// Placeholders: `{tokens}`, `{budget}`.
    pub usage_month: String,
    /// Placeholder: `{tokens}`.
    pub usage_month_unlimited: String,
    /// Placeholders: `{today}`, `{month}` (amounts with their currency).
    pub usage_cost: String,
    /// Placeholder: `{budget}` (an amount with its currency).
    pub usage_cost_budget: String,
    /// The first line of an admin's `/usage <user id>`. Placeholder:
    /// `{user}`.
    pub usage_of_user: String,
    /// Placeholder: `{budget}`.
    pub monthly_budget_exceeded: String,
    /// Placeholder: `{budget}` (an amount with its currency).
    pub monthly_cost_exceeded: String,
    /// Above the first answer after `session.new_dialog_after` of silence
    /// (plain text; shown in italics).
    pub new_dialog_notice: String,
    /// The label of the button under a finished answer.
    pub button_regenerate: String,
    /// The label of the button on an answer being written.
    pub button_stop: String,
    /// The alert for a press by someone the button is not for.
    pub button_not_yours: String,
    /// A press whose data the bot does not know (an old or forged button).
    pub button_unknown: String,
    /// Regenerate pressed on an answer that is not the latest.
    pub button_only_latest: String,
    /// Regenerate pressed again on an answer already regenerated.
    pub button_already_done: String,
    /// Regenerate pressed: the new answer is being written.
    pub button_working: String,
    /// Stop pressed and the answer stopped.
    pub button_stopped: String,
    /// Stop pressed after the answer was finished.
    pub button_nothing_to_stop: String,
    /// A press refused by the rate limits (when they say nothing else).
    pub button_refused: String,
    /// A control-room command (`/mode`, `/pause`, `/resume`, `/fans`,
    /// `/persona fans`) from a user without an enabled Business connection.
    pub biz_no_connection: String,
    /// A control-room command from its creator outside their private chat.
    pub biz_control_room_only: String,
    /// A control-room change that could not be stored.
    pub biz_unavailable: String,
    pub biz_mode_draft: String,
    pub biz_mode_auto: String,
    pub biz_mode_off: String,
    pub biz_mode_paused: String,
    /// Placeholders: `{mode}`, `{fans}`.
    pub biz_mode_show: String,
    pub biz_mode_no_own: String,
    /// Placeholder: `{mode}`.
    pub biz_mode_set: String,
    /// Placeholders: `{fan}`, `{mode}`.
    pub biz_mode_fan_set: String,
    pub biz_mode_usage: String,
    pub biz_pause_usage: String,
    pub biz_resume_usage: String,
    pub biz_paused: String,
    pub biz_resumed: String,
    /// Placeholder: `{fan}`.
    pub biz_fan_paused: String,
    /// Placeholder: `{fan}`.
    pub biz_fan_resumed: String,
    /// Placeholder: `{fans}`.
    pub biz_fans: String,
    pub biz_fans_none: String,
    pub biz_ago_now: String,
    /// Placeholder: `{n}`.
    pub biz_ago_minutes: String,
    /// Placeholder: `{n}`.
    pub biz_ago_hours: String,
    /// Placeholder: `{n}`.
    pub biz_ago_days: String,
    /// Placeholder: `{persona}`.
    pub biz_persona_fans_set: String,
    pub biz_persona_fans_default: String,
    /// Sent to the control room when a connection is enabled.
    pub biz_welcome: String,
    /// Sent to the control room when a connection is disabled.
    pub biz_disabled: String,
    /// The control room's suggestion header. Placeholders: `{fan}` (name), `{text}` (the fan's message).
    pub draft_from: String,
    /// Shown instead of a suggestion when none could be written. Placeholder: `{reason}`.
    pub draft_failed: String,
    pub draft_send: String,
    pub draft_another: String,
    pub draft_edit: String,
    pub draft_skip: String,
    /// Status line under a suggestion that was sent.
    pub draft_sent: String,
    /// Status line under a suggestion replaced by the creator's own text, and the confirmation. Placeholder: `{fan}`.
    pub draft_sent_yours: String,
    /// Status line under a skipped suggestion.
    pub draft_skipped: String,
    /// Status line: the fan wrote again. Placeholder: `{fan}`.
    pub draft_outdated: String,
    /// Status line: the creator answered the fan themselves.
    pub draft_answered: String,
    /// Status line: the fan's message was deleted.
    pub draft_deleted: String,
    /// Status line while the creator writes their own reply. Placeholder: `{fan}`.
    pub draft_editing: String,
    /// The button answer to Edit.
    pub draft_edit_toast: String,
    /// The button answer to Another.
    pub draft_writing: String,
    /// The button answer to Send.
    pub draft_sending: String,
    /// A tap on a suggestion that is no longer open.
    pub draft_gone: String,
    /// Send without the reply right.
    pub draft_no_right: String,
    /// Send while the connection is off or gone.
    pub draft_connection_off: String,
    /// Status line: Telegram refused or failed to deliver it (the suggestion stays open).
    pub draft_not_sent: String,
    /// The creator's own reply came for a suggestion no longer open. Placeholder: `{fan}`.
    pub draft_reply_late: String,
    /// Another over the fan's or connection's rate limit.
    pub draft_slow_down: String,
    /// `/forget <fan>` done (`{fan}`: the fan's chat id).
    pub biz_forgot_fan: String,
    /// `/forget` with something that is not a fan's chat id.
    pub biz_forget_usage: String,
    /// Status line under a suggestion whose fan was forgotten.
    pub draft_forgotten: String,
}

/// Errors loading the compiled-in locale files.
#[derive(Debug, thiserror::Error)]
#[error("locale `{locale}`: {reason}")]
pub struct LocaleError {
    locale: &'static str,
    reason: String,
}

/// All locales, loaded once at start and shared read-only.
#[derive(Debug, Clone)]
pub struct Locales {
    english: Arc<Texts>,
    russian: Arc<Texts>,
}

const EN: &str = include_str!("../config/locales/en.toml");
const RU: &str = include_str!("../config/locales/ru.toml");

impl Locales {
    /// Parses the compiled-in locale files.
    pub fn load() -> Result<Self, LocaleError> {
        let parse = |locale: &'static str, text: &str| {
            toml_texts(text).map_err(|reason| LocaleError { locale, reason })
        };
        Ok(Self {
            english: Arc::new(parse("en", EN)?),
            russian: Arc::new(parse("ru", RU)?),
        })
    }

    /// The texts for a Telegram `language_code`; English when absent or unknown.
    pub fn for_language(&self, language_code: Option<&str>) -> &Arc<Texts> {
        match language_key(language_code) {
            "ru" => &self.russian,
            _ => &self.english,
        }
    }

    /// The languages with texts, as Telegram language codes.
    pub const LANGUAGES: [&'static str; 2] = ["en", "ru"];
}

/// The supported language a Telegram `language_code` maps to (`ru-RU` →
/// `ru`), English otherwise.
pub fn language_key(language_code: Option<&str>) -> &'static str {
    let primary = language_code
        .and_then(|code| code.split(['-', '_']).next())
        .map(str::to_ascii_lowercase);
    match primary.as_deref() {
        Some("ru") => "ru",
        _ => "en",
    }
}

fn toml_texts(text: &str) -> Result<Texts, String> {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

/// Fills `{name}` placeholders in `template` in one left-to-right pass.
/// Inserted values are never scanned again, and unknown placeholders stay as
/// written.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replaced = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value, close))
        });
        match replaced {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A wait told to users ("try again in about N seconds"): whole seconds,
/// rounded up, at least one.
pub fn retry_in_seconds(wait: std::time::Duration) -> String {
    (wait.as_secs_f64().ceil().max(1.0) as u64).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wait_is_told_in_whole_seconds_rounded_up_and_never_zero() {
        use std::time::Duration;
        assert_eq!(super::retry_in_seconds(Duration::ZERO), "1");
        assert_eq!(super::retry_in_seconds(Duration::from_millis(1)), "1");
        assert_eq!(super::retry_in_seconds(Duration::from_millis(1_001)), "2");
        assert_eq!(super::retry_in_seconds(Duration::from_secs(30)), "30");
    }

    use super::*;

    #[test]
    fn every_locale_has_every_key() {
        // deny_unknown_fields + required fields: a missing or extra key fails here.
        let locales = Locales::load().unwrap();
        assert!(locales.for_language(Some("ru")).help.contains("/reset"));
        assert!(locales.for_language(None).help.contains("/reset"));
    }

    #[test]
    fn a_missing_key_fails_to_load() {
        let without_reset_done: String = EN
            .lines()
            .filter(|line| !line.starts_with("reset_done"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(toml_texts(&without_reset_done).is_err());
    }

    #[test]
    fn language_codes_pick_the_locale() {
        let locales = Locales::load().unwrap();
        let ru = locales.for_language(Some("ru-RU"));
        assert!(Arc::ptr_eq(ru, &locales.russian));
        assert!(Arc::ptr_eq(
            locales.for_language(Some("de")),
            &locales.english
        ));
    }

    #[test]
    fn fill_is_single_pass() {
        assert_eq!(
            fill(
                "{command} is unknown, limit {limit}",
                &[("command", "{limit}"), ("limit", "9")]
            ),
            "{limit} is unknown, limit 9"
        );
        assert_eq!(fill("{x} and {", &[]), "{x} and {");
    }
}

//! `/persona`: which system prompt this chat answers with (see
//! [`crate::persona`] for the order), and the voice each request is sent
//! with.
//!
//! The choice lives in the chat's settings (`persona`, `custom_prompt`),
//! stored with the turn like any setting: it survives restarts and
//! `/reset`, and `/forget` clears it. At most one of the two is set:
//! picking a persona drops the chat's own prompt and the other way round.
//! In groups the changing forms need a group admin (`group_admin.rs`).

use std::sync::Arc;

use super::SessionState;
use super::turn::{Reply, Turn};
use crate::input::{self, Rejection};
use crate::persona::{DEFAULT_NAME, Persona};
use crate::telegram::command::PersonaArg;
use crate::texts::{Texts, fill, language_key};

/// What a request is sent with: the system prompt, and the persona's model
/// and temperature (a command's own, and the chat's `/model` choice, win).
pub(super) struct Voice {
    /// The system message, exactly.
    pub(super) prompt: Arc<str>,
    /// The persona's model, if it sets one.
    pub(super) model: Option<Arc<str>>,
    /// The persona's temperature, if it sets one.
    pub(super) temperature: Option<f32>,
}

/// The chat's voice: its own prompt (with the default persona's model and
/// temperature), else its persona. Shares the prompt; the chat's own is
/// turned into an `Arc` once, not per request.
pub(super) fn voice(state: &mut SessionState) -> Voice {
    let Some(own) = state.settings.custom_prompt.as_deref() else {
        state.own_prompt = None;
        let persona = state.personas.chosen(&state.settings);
        return Voice {
            prompt: Arc::clone(&persona.prompt),
            model: persona.model.clone(),
            temperature: persona.temperature,
        };
    };
    let prompt = match &state.own_prompt {
        Some(cached) if **cached == *own => Arc::clone(cached),
        _ => {
            let fresh: Arc<str> = own.into();
            state.own_prompt = Some(Arc::clone(&fresh));
            fresh
        }
    };
    let default = state.personas.default_persona();
    Voice {
        prompt,
        model: default.model.clone(),
        temperature: default.temperature,
    }
}

/// `/persona …`.
pub(super) fn on_persona(state: &mut SessionState, turn: &Turn<'_>, arg: &PersonaArg) -> Reply {
    let texts = &turn.texts;
    Reply::Plain(match arg {
        PersonaArg::List => return Reply::Buttons(list(state, texts), picker(state, texts)),
        PersonaArg::Show => show(state, texts),
        PersonaArg::Default => {
            state.settings.persona = None;
            state.settings.custom_prompt = None;
            tracing::info!("persona reset to the default");
            texts.persona_default_set.clone()
        }
        PersonaArg::Pick(name) => pick(state, texts, name),
        PersonaArg::Custom(text) => set_own(state, texts, text),
        // With Business on, the control room answers it (`control.rs`);
        // without, it is the name of a persona, as before Business.
        PersonaArg::Fans(name) => {
            let words = format!("fans {}", name.as_deref().unwrap_or("default"));
            pick(state, texts, &words)
        }
    })
}

/// The personas, one line each, the chat's marked, in its language.
fn list(state: &SessionState, texts: &Texts) -> String {
    let language = language_key(state.settings.language_code.as_deref());
    let personas = &state.personas;
    let default = personas.default_persona();
    let default_description = if *default.name == *DEFAULT_NAME {
        texts.persona_default_description.as_str()
    } else {
        default.description_in(language)
    };
    let current = current_name(state, texts);
    let mark = |name: &str| if name == current { " ✓" } else { "" };
    let mut lines = vec![format!(
        "{DEFAULT_NAME} — {default_description}{}",
        mark(DEFAULT_NAME)
    )];
    lines.extend(
        personas
            .named()
            .iter()
            .filter(|p| !Arc::ptr_eq(&p.name, &default.name))
            .map(|p| {
                format!(
                    "{} — {}{}",
                    p.name,
                    p.description_in(language),
                    mark(&p.name)
                )
            }),
    );
    fill(
        &texts.persona_list,
        &[("current", current), ("personas", &lines.join("\n"))],
    )
}

/// The `/persona` picker: the default, then the named personas, as
/// buttons (`buttons.rs`); pressed, each runs `/persona <name>`.
fn picker(state: &SessionState, texts: &Texts) -> crate::telegram::buttons::Keyboard {
    let default = &state.personas.default_persona().name;
    let names = std::iter::once(DEFAULT_NAME).chain(
        state
            .personas
            .named()
            .iter()
            .filter(|p| !Arc::ptr_eq(&p.name, default))
            .map(|p| &*p.name),
    );
    super::buttons::persona_keyboard(names, current_name(state, texts))
}

/// What `/persona` calls the chat's current choice.
fn current_name<'a>(state: &'a SessionState, texts: &'a Texts) -> &'a str {
    if state.settings.custom_prompt.is_some() {
        return &texts.persona_custom_name;
    }
    let chosen: &Persona = state.personas.chosen(&state.settings);
    if Arc::ptr_eq(&chosen.name, &state.personas.default_persona().name) {
        DEFAULT_NAME
    } else {
        &chosen.name
    }
}

/// The system prompt in effect, with its persona's name.
fn show(state: &mut SessionState, texts: &Texts) -> String {
    let prompt = voice(state).prompt;
    fill(
        &texts.persona_show,
        &[("persona", current_name(state, texts)), ("prompt", &prompt)],
    )
}

/// The reply to a persona name nobody configured: the names there are.
pub(super) fn unknown(state: &SessionState, texts: &Texts, name: &str) -> String {
    let names: Vec<&str> = std::iter::once(DEFAULT_NAME)
        .chain(state.personas.named().iter().map(|p| &*p.name))
        .collect();
    fill(
        &texts.persona_unknown,
        &[("persona", name), ("personas", &names.join(", "))],
    )
}

/// `/persona NAME`: a configured persona (the chat's own prompt goes).
fn pick(state: &mut SessionState, texts: &Texts, name: &str) -> String {
    let Some(persona) = state.personas.get(name) else {
        return unknown(state, texts, name);
    };
    tracing::info!(persona = %persona.name, "persona picked");
    let reply = fill(&texts.persona_chosen, &[("persona", &persona.name)]);
    state.settings.persona = Some(persona.name.to_string());
    state.settings.custom_prompt = None;
    reply
}

/// `/persona custom TEXT`: cleaned like any input and bounded by
/// `input.max_system_prompt_chars`; a refusal changes nothing.
fn set_own(state: &mut SessionState, texts: &Texts, text: &str) -> String {
    let limit = state.deps.config.input.max_system_prompt_chars;
    match input::validate(text, limit) {
        Err(Rejection::Empty) => texts.persona_custom_empty.clone(),
        Err(Rejection::TooLong { length, limit }) => {
            tracing::info!(length, limit, "own system prompt refused: too long");
            fill(
                &texts.persona_custom_too_long,
                &[
                    ("length", &length.to_string()),
                    ("limit", &limit.to_string()),
                ],
            )
        }
        Ok(cleaned) => {
            let length = cleaned.chars().count();
            tracing::info!(length, "own system prompt set");
            state.settings.custom_prompt = Some(cleaned);
            state.settings.persona = None;
            fill(
                &texts.persona_custom_set,
                &[("length", &length.to_string())],
            )
        }
    }
}

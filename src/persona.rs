//! Personas: the system prompts a chat may answer with, resolved once from
//! the configuration and shared by every session.
//!
//! A chat answers with one of three prompts, in this order:
//!
//! 1. its own (`/persona custom <text>`, [`ChatSettings::custom_prompt`]),
//!    with the default persona's model and temperature;
//! 2. the `[[personas]]` entry it picked (`/persona <name>`,
//!    [`ChatSettings::persona`]), with that entry's model and temperature;
//! 3. the default persona: the entry named by `llm.default_persona`, or
//!    `llm.system_prompt` (with `[llm]`'s model and temperature) when none
//!    is named.
//!
//! A picked name that the configuration no longer has falls back to the
//! default. The prompts are [`Arc<str>`]s built here once, so a request
//! shares them instead of copying them; the text sent is exactly the
//! configured one — no user text is ever put inside a system prompt.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::store::record::ChatSettings;

/// One persona, ready to be sent.
#[derive(Debug, Clone)]
pub struct Persona {
    /// Its name (`default` for the default persona from `llm.system_prompt`).
    pub name: Arc<str>,
    /// The description per language code (empty for `llm.system_prompt`).
    pub description: BTreeMap<String, String>,
    /// The system prompt, exactly as configured.
    pub prompt: Arc<str>,
    /// Its model on the primary provider, if it sets one.
    pub model: Option<Arc<str>>,
    /// Its sampling temperature, if it sets one.
    pub temperature: Option<f32>,
}

/// The configured personas and the default one.
#[derive(Debug, Clone)]
pub struct Personas {
    default: Persona,
    named: Vec<Persona>,
}

/// The name `/persona` shows for the default persona.
pub const DEFAULT_NAME: &str = "default";

impl Personas {
    /// The personas of `config` (already validated).
    pub fn from_config(config: &Config) -> Self {
        let named: Vec<Persona> = config
            .personas
            .iter()
            .map(|p| Persona {
                name: p.name.as_str().into(),
                description: p.description.clone(),
                prompt: p.system_prompt.as_str().into(),
                model: p.model.as_deref().map(Arc::from),
                temperature: p.temperature,
            })
            .collect();
        let default = named
            .iter()
            .find(|p| *p.name == *config.llm.default_persona)
            .cloned()
            .unwrap_or_else(|| Persona {
                name: DEFAULT_NAME.into(),
                description: BTreeMap::new(),
                prompt: config.llm.system_prompt.as_str().into(),
                model: None,
                temperature: None,
            });
        Self { default, named }
    }

    /// The default persona.
    pub fn default_persona(&self) -> &Persona {
        &self.default
    }

    /// The configured personas, in the configuration's order.
    pub fn named(&self) -> &[Persona] {
        &self.named
    }

    /// The configured persona called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Persona> {
        self.named.iter().find(|p| *p.name == *name)
    }

    /// The persona a chat with `settings` answers with, ignoring its own
    /// prompt: the one it picked if still configured, else the default.
    pub fn chosen(&self, settings: &ChatSettings) -> &Persona {
        settings
            .persona
            .as_deref()
            .and_then(|name| self.get(name))
            .unwrap_or(&self.default)
    }
}

impl Persona {
    /// Its description in `language` (a locale key), else in English.
    pub fn description_in(&self, language: &str) -> &str {
        self.description
            .get(language)
            .or_else(|| self.description.get("en"))
            .map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_system_prompt_unless_a_persona_is_named() {
        let config = Config::from_defaults_with("").unwrap();
        let personas = Personas::from_config(&config);
        assert_eq!(
            &*personas.default_persona().prompt,
            config.llm.system_prompt
        );
        assert_eq!(&*personas.default_persona().name, DEFAULT_NAME);
        assert!(personas.named().len() >= 2);

        let config = Config::from_defaults_with("[llm]\ndefault_persona = \"brand\"\n").unwrap();
        let personas = Personas::from_config(&config);
        let brand = config.persona("brand").unwrap();
        assert_eq!(&*personas.default_persona().prompt, brand.system_prompt);
        assert_eq!(personas.default_persona().temperature, brand.temperature);
    }

    #[test]
    fn a_chat_gets_its_pick_or_the_default() {
        let config = Config::from_defaults_with("").unwrap();
        let personas = Personas::from_config(&config);
        let mut settings = ChatSettings::default();
        assert!(Arc::ptr_eq(
            &personas.chosen(&settings).prompt,
            &personas.default_persona().prompt
        ));
        settings.persona = Some("fan_replies".into());
        assert_eq!(
            &*personas.chosen(&settings).prompt,
            config.persona("fan_replies").unwrap().system_prompt
        );
        // Shared, not copied: the same allocation every time.
        assert!(Arc::ptr_eq(
            &personas.chosen(&settings).prompt,
            &personas.get("fan_replies").unwrap().prompt
        ));
        settings.persona = Some("gone".into());
        assert_eq!(&*personas.chosen(&settings).name, DEFAULT_NAME);
    }

    #[test]
    fn descriptions_fall_back_to_english() {
        let config = Config::from_defaults_with("").unwrap();
        let personas = Personas::from_config(&config);
        let brand = personas.get("brand").unwrap();
        assert_ne!(brand.description_in("ru"), brand.description_in("en"));
        assert_eq!(brand.description_in("de"), brand.description_in("en"));
    }
}

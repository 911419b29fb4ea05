//! The bot's commands, parsed once where an update comes in.
//!
//! A text starting with `/name` (optionally `/name@bot`) is a command. The
//! boundary ([`super::inbound`]) turns it into one [`Command`]: one of the
//! bot's own (the table `BUILT_INS` here is the only place their names are
//! written), an assistant command from `[[commands]]` in the config
//! ([`Command::Assistant`]), or [`Command::Unknown`]. Everything past the
//! boundary matches on the enum, so a new command is one variant and the
//! compiler finds every place that must handle it. The command menu
//! ([`menu`]) and the names configured commands may not take
//! ([`is_built_in`]) come from the same table.
//!
//! Names are case-insensitive (ASCII); `@bot` must name this bot, or the
//! command is for another bot ([`Parsed::ForAnotherBot`]). Arguments are
//! everything after the command word, trimmed. Malformed arguments are kept
//! as such ([`UserArg::Malformed`]): the session answers them with a usage
//! line, after the admin check, as it did when it parsed them itself.

use std::borrow::Cow;

use crate::config::{BusinessMode, CommandConfig, CommandCost};
use crate::texts::Texts;

/// One command, with the arguments it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/start`: the greeting.
    Start,
    /// `/help`: what the bot does, and the assistant commands.
    Help,
    /// `/reset`: the history is cleared; settings stay.
    Reset,
    /// `/retry`: the last question is asked again.
    Retry,
    /// `/cancel`: the answer being written (or the messages held to be
    /// merged) is dropped.
    Cancel,
    /// `/forget`: the chat's record is deleted (its spend stays).
    Forget,
    /// `/usage`: this chat's tokens (and their cost) today and this month,
    /// with the budgets; `/usage ID` (admins): that user's private chat's.
    Usage(Option<UserArg>),
    /// `/model [name]`: without a name, which model answers (anyone); with
    /// one, sets the bot's model (admins) or this chat's own among
    /// `llm.user_models` (anyone else).
    Model(Option<String>),
    /// `/stats` (admins): a compact view of the service.
    Stats,
    /// `/health` (admins): the readiness report.
    Health,
    /// `/persona …`: the chat's persona or own system prompt.
    Persona(PersonaArg),
    /// `/ban ID` (admins).
    Ban(UserArg),
    /// `/unban ID` (admins).
    Unban(UserArg),
    /// `/mode …` (a Telegram Business creator's control room): show or set
    /// the mode of their connection or of one fan.
    Mode(ModeArg),
    /// `/pause [fan]` (control room): nothing is drafted or sent for every
    /// fan, or for one.
    Pause(FanArg),
    /// `/resume [fan]` (control room): undoes `/pause`.
    Resume(FanArg),
    /// `/fans` (control room): the recently active fans.
    Fans,
    /// `/forget FAN` (control room): everything about one fan goes (the
    /// front routes it to that fan's conversation). Never
    /// [`FanArg::All`]: `/forget` alone is [`Command::Forget`]. Without
    /// Business it is `/forget`, as before.
    ForgetFan(FanArg),
    /// A `[[commands]]` entry of the config: its template is filled with
    /// `args` (or with the next text when `args` is empty).
    Assistant {
        /// The entry's name.
        name: String,
        /// Everything after the command word, trimmed.
        args: String,
        /// Its class for the rate limiter.
        cost: CommandCost,
    },
    /// A command nobody defined, by its (lower-case) name.
    Unknown(String),
}

/// The user id argument of `/ban`, `/unban` and `/usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserArg {
    /// A user id.
    Id(i64),
    /// Not a user id (answered with the command's usage), as given.
    Malformed(String),
}

impl UserArg {
    fn parse(args: &str) -> Self {
        args.parse()
            .map_or_else(|_| Self::Malformed(args.to_owned()), Self::Id)
    }
}

/// What `/persona` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonaArg {
    /// `/persona`: list the personas, marking the chat's.
    List,
    /// `/persona show`: the system prompt in effect.
    Show,
    /// `/persona default`: back to the default persona (the chat's own
    /// prompt and pick are cleared).
    Default,
    /// `/persona custom TEXT`: the chat's own system prompt, as typed (the
    /// session cleans and bounds it; empty when none was given).
    Custom(String),
    /// `/persona NAME`: pick a configured persona (lower-cased; the
    /// session checks it exists).
    Pick(String),
    /// `/persona fans NAME` / `/persona fans default` (a Business creator's
    /// control room): the persona fans are answered in (lower-cased;
    /// `None`: back to `business.persona`). Without Business it is a
    /// [`PersonaArg::Pick`] of the whole text, as before.
    Fans(Option<String>),
}

impl PersonaArg {
    fn parse(args: &str) -> Self {
        let (word, rest) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        match word.to_ascii_lowercase().as_str() {
            "" => Self::List,
            "show" if rest.is_empty() => Self::Show,
            "default" if rest.is_empty() => Self::Default,
            "custom" => Self::Custom(rest.trim().to_owned()),
            "fans" if !rest.trim().is_empty() => match rest.trim().to_ascii_lowercase() {
                default if default == "default" => Self::Fans(None),
                name => Self::Fans(Some(name)),
            },
            _ => Self::Pick(args.to_ascii_lowercase()),
        }
    }

    /// The arguments that parse back to it.
    fn words(&self) -> Cow<'_, str> {
        match self {
            Self::List => Cow::Borrowed(""),
            Self::Show => Cow::Borrowed("show"),
            Self::Default => Cow::Borrowed("default"),
            Self::Custom(text) if text.is_empty() => Cow::Borrowed("custom"),
            Self::Custom(text) => Cow::Owned(format!("custom {text}")),
            Self::Pick(name) => Cow::Borrowed(name.as_str()),
            Self::Fans(None) => Cow::Borrowed("fans default"),
            Self::Fans(Some(name)) => Cow::Owned(format!("fans {name}")),
        }
    }
}

/// A fan, as the control-room commands name one: by the chat id `/fans`
/// lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanArg {
    /// No fan named: the whole connection.
    All,
    /// The fan's chat id.
    Fan(i64),
    /// Not a chat id (answered with the command's usage), as given.
    Malformed(String),
}

impl FanArg {
    fn parse(args: &str) -> Self {
        if args.is_empty() {
            return Self::All;
        }
        args.parse()
            .map_or_else(|_| Self::Malformed(args.to_owned()), Self::Fan)
    }

    /// The arguments that parse back to it.
    fn words(&self) -> Cow<'_, str> {
        match self {
            Self::All => Cow::Borrowed(""),
            Self::Fan(chat) => Cow::Owned(chat.to_string()),
            Self::Malformed(given) => Cow::Borrowed(given.as_str()),
        }
    }
}

/// What `/mode` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeArg {
    /// `/mode`: the connection's mode and the fans with their own.
    Show,
    /// `/mode draft|auto|off` (`fan: None`) or `/mode FAN draft|auto|off`.
    Set {
        /// The fan's chat id; `None` for the connection.
        fan: Option<i64>,
        /// The new mode.
        mode: BusinessMode,
    },
    /// Anything else (answered with the usage), as given.
    Malformed(String),
}

impl ModeArg {
    fn parse(args: &str) -> Self {
        let words: Vec<&str> = args.split_whitespace().collect();
        let mode = |word: &str| match word.to_ascii_lowercase().as_str() {
            "draft" => Some(BusinessMode::Draft),
            "auto" => Some(BusinessMode::Auto),
            "off" => Some(BusinessMode::Off),
            _ => None,
        };
        let parsed = match words.as_slice() {
            [] => Some(Self::Show),
            [word] => mode(word).map(|mode| Self::Set { fan: None, mode }),
            [fan, word] => fan
                .parse()
                .ok()
                .zip(mode(word))
                .map(|(fan, mode)| Self::Set {
                    fan: Some(fan),
                    mode,
                }),
            _ => None,
        };
        parsed.unwrap_or_else(|| Self::Malformed(args.to_owned()))
    }

    /// The arguments that parse back to it.
    fn words(&self) -> Cow<'_, str> {
        let name = |mode: &BusinessMode| super::buttons::mode_word(*mode);
        match self {
            Self::Show => Cow::Borrowed(""),
            Self::Set { fan: None, mode } => Cow::Borrowed(name(mode)),
            Self::Set {
                fan: Some(fan),
                mode,
            } => Cow::Owned(format!("{fan} {}", name(mode))),
            Self::Malformed(given) => Cow::Borrowed(given.as_str()),
        }
    }
}

/// What a text is, as far as commands go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A command for this bot.
    Command(Command),
    /// A command addressed to another bot (`/start@other_bot`): ignored.
    ForAnotherBot,
    /// Not a command ("/ hello" and "/😀" are text that starts with a slash).
    Text,
}

/// One of the bot's own commands: its name, how its arguments are read,
/// and its line in the command menu, if it has one.
struct BuiltIn {
    name: &'static str,
    parse: fn(&str) -> Command,
    menu: Option<fn(&Texts) -> &str>,
}

/// The bot's own commands. The menu lists those with a menu text, in this
/// order.
const BUILT_INS: &[BuiltIn] = &[
    BuiltIn {
        name: "start",
        parse: |_| Command::Start,
        menu: None,
    },
    BuiltIn {
        name: "help",
        parse: |_| Command::Help,
        menu: Some(|texts| &texts.menu_help),
    },
    BuiltIn {
        name: "retry",
        parse: |_| Command::Retry,
        menu: Some(|texts| &texts.menu_retry),
    },
    BuiltIn {
        name: "reset",
        parse: |_| Command::Reset,
        menu: Some(|texts| &texts.menu_reset),
    },
    BuiltIn {
        name: "cancel",
        parse: |_| Command::Cancel,
        menu: None,
    },
    BuiltIn {
        name: "forget",
        parse: |args| match FanArg::parse(args) {
            FanArg::All => Command::Forget,
            fan => Command::ForgetFan(fan),
        },
        menu: Some(|texts| &texts.menu_forget),
    },
    BuiltIn {
        name: "usage",
        parse: |args| Command::Usage((!args.is_empty()).then(|| UserArg::parse(args))),
        menu: None,
    },
    BuiltIn {
        name: "model",
        parse: |args| Command::Model((!args.is_empty()).then(|| args.to_owned())),
        menu: None,
    },
    BuiltIn {
        name: "persona",
        parse: |args| Command::Persona(PersonaArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "stats",
        parse: |_| Command::Stats,
        menu: None,
    },
    BuiltIn {
        name: "health",
        parse: |_| Command::Health,
        menu: None,
    },
    BuiltIn {
        name: "ban",
        parse: |args| Command::Ban(UserArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "unban",
        parse: |args| Command::Unban(UserArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "mode",
        parse: |args| Command::Mode(ModeArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "pause",
        parse: |args| Command::Pause(FanArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "resume",
        parse: |args| Command::Resume(FanArg::parse(args)),
        menu: None,
    },
    BuiltIn {
        name: "fans",
        parse: |_| Command::Fans,
        menu: None,
    },
];

/// Parses `text`: a command for this bot (`bot_username`, compared without
/// case), one for another bot, or plain text. `assistants` are the
/// configured commands (`[[commands]]`).
pub fn parse(text: &str, bot_username: &str, assistants: &[CommandConfig]) -> Parsed {
    let Some(rest) = text.strip_prefix('/') else {
        return Parsed::Text;
    };
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (name, mention) = match word.split_once('@') {
        Some((name, mention)) => (name, Some(mention)),
        None => (word, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        // "/ hello" or "/😀" is text that happens to start with a slash.
        return Parsed::Text;
    }
    if mention.is_some_and(|m| !m.eq_ignore_ascii_case(bot_username)) {
        return Parsed::ForAnotherBot;
    }
    Parsed::Command(Command::from_words(
        &name.to_ascii_lowercase(),
        args.trim(),
        assistants,
    ))
}

/// Whether `name` is one of the bot's own commands (configured commands may
/// not take these names).
pub fn is_built_in(name: &str) -> bool {
    BUILT_INS.iter().any(|built_in| built_in.name == name)
}

/// The bot's own entries of the command menu, in order: each name with its
/// description in `texts`' language. The configured commands follow them.
pub fn menu(texts: &Texts) -> impl Iterator<Item = (&'static str, &str)> {
    BUILT_INS
        .iter()
        .filter_map(|built_in| Some((built_in.name, (built_in.menu?)(texts))))
}

/// How many entries [`menu`] gives (check-config counts them against
/// Telegram's limit).
pub fn menu_len() -> usize {
    BUILT_INS.iter().filter(|b| b.menu.is_some()).count()
}

impl Command {
    /// The command named `name` (lower-case, without `/` or `@bot`) with
    /// `args` (trimmed). Also rebuilds a stored update's command from the
    /// words [`Command::words`] gave, against the configuration of the day.
    pub fn from_words(name: &str, args: &str, assistants: &[CommandConfig]) -> Self {
        if let Some(built_in) = BUILT_INS.iter().find(|b| b.name == name) {
            return (built_in.parse)(args);
        }
        match assistants.iter().find(|command| command.name == name) {
            Some(command) => Self::Assistant {
                name: name.to_owned(),
                args: args.to_owned(),
                cost: command.cost,
            },
            None => Self::Unknown(name.to_owned()),
        }
    }

    /// The command's name, as typed after `/` (lower-case).
    pub fn name(&self) -> &str {
        match self {
            Self::Start => "start",
            Self::Help => "help",
            Self::Reset => "reset",
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::Forget => "forget",
            Self::Usage(_) => "usage",
            Self::Model(_) => "model",
            Self::Persona(_) => "persona",
            Self::Stats => "stats",
            Self::Health => "health",
            Self::Ban(_) => "ban",
            Self::Unban(_) => "unban",
            Self::Mode(_) => "mode",
            Self::Pause(_) => "pause",
            Self::Resume(_) => "resume",
            Self::Fans => "fans",
            Self::ForgetFan(_) => "forget",
            Self::Assistant { name, .. } | Self::Unknown(name) => name,
        }
    }

    /// The command as words to store: its name, and the arguments it uses
    /// (others are dropped). [`Command::from_words`] reads them back.
    pub fn words(&self) -> (&str, Cow<'_, str>) {
        let args = match self {
            Self::Model(Some(model)) => Cow::Borrowed(model.as_str()),
            Self::Ban(user) | Self::Unban(user) | Self::Usage(Some(user)) => match user {
                UserArg::Id(id) => Cow::Owned(id.to_string()),
                UserArg::Malformed(given) => Cow::Borrowed(given.as_str()),
            },
            Self::Assistant { args, .. } => Cow::Borrowed(args.as_str()),
            Self::Persona(arg) => arg.words(),
            Self::Mode(arg) => arg.words(),
            Self::Pause(fan) | Self::Resume(fan) | Self::ForgetFan(fan) => fan.words(),
            Self::Start
            | Self::Help
            | Self::Reset
            | Self::Retry
            | Self::Cancel
            | Self::Forget
            | Self::Usage(None)
            | Self::Model(None)
            | Self::Stats
            | Self::Health
            | Self::Fans
            | Self::Unknown(_) => Cow::Borrowed(""),
        };
        (self.name(), args)
    }

    /// Whether it is one of a Telegram Business creator's control-room
    /// commands (`/mode`, `/pause`, `/resume`, `/fans`, `/persona fans`,
    /// `/forget FAN`):
    /// meaningful only with `business.enabled`, and only for a user who owns
    /// an enabled connection.
    pub fn is_business(&self) -> bool {
        matches!(
            self,
            Self::Mode(_)
                | Self::Pause(_)
                | Self::Resume(_)
                | Self::Fans
                | Self::ForgetFan(_)
                | Self::Persona(PersonaArg::Fans(_))
        )
    }

    /// Whether only admins (`admin_ids`) may run it; anyone else is refused
    /// and a security event is counted. `/model` is not: anyone may ask
    /// which model answers, or choose among `llm.user_models`.
    pub fn is_admin_only(&self) -> bool {
        matches!(
            self,
            Self::Stats | Self::Health | Self::Ban(_) | Self::Unban(_) | Self::Usage(Some(_))
        )
    }

    /// Whether answering it takes an LLM call (the rate limiter's cost):
    /// `/retry`, and the assistant commands whose cost is `llm`.
    pub fn costs_llm_call(&self) -> bool {
        match self {
            Self::Retry => true,
            Self::Assistant { cost, .. } => *cost == CommandCost::Llm,
            Self::Start
            | Self::Help
            | Self::Reset
            | Self::Cancel
            | Self::Forget
            | Self::Usage(_)
            | Self::Model(_)
            | Self::Persona(_)
            | Self::Stats
            | Self::Health
            | Self::Ban(_)
            | Self::Unban(_)
            | Self::Mode(_)
            | Self::Pause(_)
            | Self::Resume(_)
            | Self::Fans
            | Self::ForgetFan(_)
            | Self::Unknown(_) => false,
        }
    }

    /// Whether it changes what a whole group shares (its conversation,
    /// model or persona): in groups only group administrators may run it.
    pub fn changes_the_group(&self) -> bool {
        matches!(
            self,
            Self::Forget
                | Self::ForgetFan(_)
                | Self::Reset
                | Self::Model(Some(_))
                | Self::Persona(PersonaArg::Default | PersonaArg::Custom(_) | PersonaArg::Pick(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BOT: &str = "llmgram_bot";

    fn assistants() -> Vec<CommandConfig> {
        Config::from_defaults_with("").unwrap().commands
    }

    fn command(text: &str) -> Command {
        match parse(text, BOT, &assistants()) {
            Parsed::Command(command) => command,
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_built_in_is_parsed_and_named_back() {
        let expected = [
            ("start", Command::Start),
            ("help", Command::Help),
            ("retry", Command::Retry),
            ("reset", Command::Reset),
            ("cancel", Command::Cancel),
            ("forget", Command::Forget),
            ("usage", Command::Usage(None)),
            ("model", Command::Model(None)),
            ("persona", Command::Persona(PersonaArg::List)),
            ("stats", Command::Stats),
            ("health", Command::Health),
            ("ban", Command::Ban(UserArg::Malformed(String::new()))),
            ("unban", Command::Unban(UserArg::Malformed(String::new()))),
            ("mode", Command::Mode(ModeArg::Show)),
            ("pause", Command::Pause(FanArg::All)),
            ("resume", Command::Resume(FanArg::All)),
            ("fans", Command::Fans),
        ];
        assert_eq!(expected.len(), BUILT_INS.len());
        for (name, parsed) in expected {
            let command = command(&format!("/{name}"));
            assert_eq!(command, parsed);
            assert_eq!(command.name(), name);
            assert!(is_built_in(name));
        }
        assert!(!is_built_in("flirt") && !is_built_in("Help"));
    }

    #[test]
    fn admin_commands_read_their_arguments() {
        assert_eq!(command("/ban 42"), Command::Ban(UserArg::Id(42)));
        assert_eq!(command("/unban -7"), Command::Unban(UserArg::Id(-7)));
        assert_eq!(
            command("/ban abc"),
            Command::Ban(UserArg::Malformed("abc".into()))
        );
        assert_eq!(
            command("/ban 1 2"),
            Command::Ban(UserArg::Malformed("1 2".into()))
        );
        assert_eq!(command("/model"), Command::Model(None));
        assert_eq!(command("/model   "), Command::Model(None));
        assert_eq!(
            command("/model  gpt-x "),
            Command::Model(Some("gpt-x".into()))
        );
        assert_eq!(command("/usage 42"), Command::Usage(Some(UserArg::Id(42))));
        assert_eq!(
            command("/usage me"),
            Command::Usage(Some(UserArg::Malformed("me".into())))
        );
        for admin_only in [
            "/stats", "/health", "/ban 1", "/unban x", "/usage 1", "/usage x",
        ] {
            assert!(command(admin_only).is_admin_only(), "{admin_only}");
        }
        for anyone in ["/model", "/model m", "/help", "/flirt", "/nope", "/usage"] {
            assert!(!command(anyone).is_admin_only(), "{anyone}");
        }
    }

    #[test]
    fn assistant_commands_come_from_the_config() {
        let config = assistants();
        let flirt = config.iter().find(|c| c.name == "flirt").unwrap();
        assert_eq!(
            command("/flirt  hi there "),
            Command::Assistant {
                name: "flirt".into(),
                args: "hi there".into(),
                cost: flirt.cost,
            }
        );
        // Without the config entry, the same word is unknown.
        assert_eq!(
            parse("/flirt hi", BOT, &[]),
            Parsed::Command(Command::Unknown("flirt".into()))
        );
        let free = Command::Assistant {
            name: "x".into(),
            args: String::new(),
            cost: CommandCost::Free,
        };
        let llm = Command::Assistant {
            name: "x".into(),
            args: String::new(),
            cost: CommandCost::Llm,
        };
        assert!(llm.costs_llm_call() && !free.costs_llm_call());
        assert!(command("/retry").costs_llm_call());
        for no_call in ["/start", "/help", "/reset", "/cancel", "/usage", "/nope"] {
            assert!(!command(no_call).costs_llm_call(), "{no_call}");
        }
    }

    #[test]
    fn bot_suffix_and_case() {
        assert_eq!(command("/Reset@LLMgram_bot  now "), Command::Reset);
        assert_eq!(command("/HELP"), Command::Help);
        assert_eq!(command("/help\nmore"), Command::Help);
        assert_eq!(command("/FLIRT@llmgram_bot x").name(), "flirt");
        assert_eq!(parse("/start@other_bot", BOT, &[]), Parsed::ForAnotherBot);
        assert_eq!(parse("/nope@other_bot", BOT, &[]), Parsed::ForAnotherBot);
    }

    #[test]
    fn unknown_commands_and_slash_text() {
        assert_eq!(command("/Nope x"), Command::Unknown("nope".into()));
        assert_eq!(command("/a_1"), Command::Unknown("a_1".into()));
        for text in ["hello", "/ hello", "/😀", "/", "/@bot", "a /help"] {
            assert_eq!(parse(text, BOT, &[]), Parsed::Text, "{text}");
        }
    }

    #[test]
    fn stored_words_read_back_the_same_command() {
        for text in [
            "/start now",
            "/model",
            "/model m",
            "/ban 5",
            "/unban x y",
            "/flirt hi",
            "/flirt",
            "/nope a",
            "/retry",
            "/persona",
            "/persona show",
            "/persona default",
            "/persona brand",
            "/persona custom",
            "/persona custom You are Mia.\n\nBe brief.",
            "/persona fans mia",
            "/persona fans default",
            "/mode",
            "/mode auto",
            "/mode 6001 off",
            "/mode sometimes",
            "/pause",
            "/pause 6001",
            "/resume x",
            "/fans",
            "/forget",
            "/forget 6001",
            "/forget bob",
        ] {
            let command = command(text);
            let (name, args) = command.words();
            assert_eq!(
                Command::from_words(name, &args, &assistants()),
                command,
                "{text}"
            );
        }
    }

    #[test]
    fn group_wide_commands() {
        for group_wide in ["/forget", "/reset", "/model m"] {
            assert!(command(group_wide).changes_the_group(), "{group_wide}");
        }
        for own in ["/model", "/help", "/retry", "/flirt x"] {
            assert!(!command(own).changes_the_group(), "{own}");
        }
    }

    #[test]
    fn persona_reads_its_forms() {
        assert_eq!(command("/persona"), Command::Persona(PersonaArg::List));
        assert_eq!(
            command("/persona  SHOW "),
            Command::Persona(PersonaArg::Show)
        );
        assert_eq!(
            command("/persona default"),
            Command::Persona(PersonaArg::Default)
        );
        assert_eq!(
            command("/persona Brand"),
            Command::Persona(PersonaArg::Pick("brand".into()))
        );
        assert_eq!(
            command("/persona custom  You are Mia.\nBe brief. "),
            Command::Persona(PersonaArg::Custom("You are Mia.\nBe brief.".into()))
        );
        assert_eq!(
            command("/persona Custom\nYou are Mia."),
            Command::Persona(PersonaArg::Custom("You are Mia.".into()))
        );
        assert_eq!(
            command("/persona custom"),
            Command::Persona(PersonaArg::Custom(String::new()))
        );
        // "show" or "default" with more words is a name nobody configured.
        assert_eq!(
            command("/persona show me"),
            Command::Persona(PersonaArg::Pick("show me".into()))
        );
        for changing in ["/persona brand", "/persona custom x", "/persona default"] {
            let command = command(changing);
            assert!(command.changes_the_group(), "{changing}");
            assert!(!command.is_admin_only() && !command.costs_llm_call());
        }
        for reading in ["/persona", "/persona show"] {
            assert!(!command(reading).changes_the_group(), "{reading}");
        }
    }

    #[test]
    fn control_room_commands_read_their_arguments() {
        assert_eq!(command("/mode"), Command::Mode(ModeArg::Show));
        assert_eq!(
            command("/mode AUTO"),
            Command::Mode(ModeArg::Set {
                fan: None,
                mode: BusinessMode::Auto
            })
        );
        assert_eq!(
            command("/mode 6001  off"),
            Command::Mode(ModeArg::Set {
                fan: Some(6001),
                mode: BusinessMode::Off
            })
        );
        for malformed in ["often", "off 6001", "6001", "fan draft", "1 2 3"] {
            assert_eq!(
                command(&format!("/mode {malformed}")),
                Command::Mode(ModeArg::Malformed(malformed.into())),
                "{malformed}"
            );
        }
        assert_eq!(command("/pause"), Command::Pause(FanArg::All));
        assert_eq!(command("/pause -42"), Command::Pause(FanArg::Fan(-42)));
        assert_eq!(
            command("/resume bob"),
            Command::Resume(FanArg::Malformed("bob".into()))
        );
        assert_eq!(command("/forget"), Command::Forget);
        assert_eq!(
            command("/forget 6001"),
            Command::ForgetFan(FanArg::Fan(6001))
        );
        assert_eq!(
            command("/forget bob"),
            Command::ForgetFan(FanArg::Malformed("bob".into()))
        );
        assert!(command("/forget 6001").changes_the_group());
        assert_eq!(
            command("/persona fans Mia"),
            Command::Persona(PersonaArg::Fans(Some("mia".into())))
        );
        assert_eq!(
            command("/persona fans default"),
            Command::Persona(PersonaArg::Fans(None))
        );
        // A persona named "fans" can still be picked.
        assert_eq!(
            command("/persona fans"),
            Command::Persona(PersonaArg::Pick("fans".into()))
        );
        for business in ["/mode", "/pause 1", "/resume", "/fans", "/persona fans x"] {
            assert!(command(business).is_business(), "{business}");
            assert!(!command(business).changes_the_group(), "{business}");
        }
        assert!(!command("/persona mia").is_business());
    }

    #[test]
    fn the_menu_lists_its_entries_in_order() {
        let locales = crate::texts::Locales::load().unwrap();
        let texts = locales.for_language(Some("en"));
        let names: Vec<&str> = menu(texts).map(|(name, _)| name).collect();
        assert_eq!(names, ["help", "retry", "reset", "forget"]);
        assert_eq!(menu_len(), names.len());
        assert!(menu(texts).all(|(_, description)| !description.is_empty()));
    }
}

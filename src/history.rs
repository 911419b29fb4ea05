//! One chat's conversation history, bounded in messages and characters.
//!
//! Owned by exactly one session actor. The oldest messages go first when a
//! bound is exceeded; the history never starts with an assistant message
//! (some chat templates require a user turn first). The system prompt is not
//! part of the history: it is prepended to every prompt, so it is always kept.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::llm::{ChatMessage, Role};
use crate::store::record::{StoredFile, StoredMessage, StoredRole};

/// Most dropped messages kept for [`History::take_evicted`]: a config
/// change shrinking the bounds must not hold a whole old history.
const MAX_EVICTED: usize = 64;

/// Bounded chat history.
#[derive(Debug, Clone)]
pub struct History {
    messages: VecDeque<ChatMessage>,
    /// The files each message came with (references only), parallel to
    /// `messages`; empty slices (no allocation) for text.
    files: VecDeque<Box<[StoredFile]>>,
    /// Messages dropped to keep the bounds, oldest first, until
    /// [`History::take_evicted`] takes them (to be summarised); at most
    /// [`MAX_EVICTED`].
    evicted: Vec<ChatMessage>,
    /// Sum of `chars().count()` over `messages`, kept to avoid rescanning.
    chars: usize,
    max_messages: usize,
    max_chars: usize,
}

impl History {
    /// An empty history with the given bounds.
    pub fn new(max_messages: usize, max_chars: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            files: VecDeque::new(),
            evicted: Vec::new(),
            chars: 0,
            max_messages,
            max_chars,
        }
    }

    /// Messages, oldest first.
    pub fn messages(&self) -> impl ExactSizeIterator<Item = &ChatMessage> + DoubleEndedIterator {
        self.messages.iter()
    }

    /// Number of messages kept.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Characters kept, over all messages.
    pub fn chars(&self) -> usize {
        self.chars
    }

    /// A history holding `messages` (oldest first), trimmed to the bounds.
    pub fn from_stored(
        messages: Vec<StoredMessage>,
        max_messages: usize,
        max_chars: usize,
    ) -> Self {
        let mut history = Self::new(max_messages, max_chars);
        for message in messages {
            let role = match message.role {
                StoredRole::User => Role::User,
                StoredRole::Assistant => Role::Assistant,
            };
            history.push_with_files(role, message.content.into(), message.files);
        }
        history
    }

    /// The messages in their stored form.
    pub fn to_stored(&self) -> Vec<StoredMessage> {
        self.messages
            .iter()
            .zip(&self.files)
            .filter_map(|(m, files)| {
                let role = match m.role {
                    Role::User => StoredRole::User,
                    Role::Assistant => StoredRole::Assistant,
                    // Never pushed: the system prompt is not history.
                    Role::System => return None,
                };
                Some(StoredMessage {
                    role,
                    content: m.content.to_string(),
                    files: files.to_vec(),
                })
            })
            .collect()
    }

    /// Removes the last exchange (the last user message and the answer after
    /// it, if any) and returns the user message, so it can be asked again:
    /// `/retry` regenerates the last answer or answers a message that failed.
    pub fn take_last_question(&mut self) -> Option<Arc<str>> {
        let last_user = self.messages.iter().rposition(|m| m.role == Role::User)?;
        self.files.truncate(last_user);
        let removed: Vec<ChatMessage> = self.messages.drain(last_user..).collect();
        self.chars -= removed
            .iter()
            .map(|m| m.content.chars().count())
            .sum::<usize>();
        removed.into_iter().next().map(|m| m.content)
    }

    /// Removes the message whose content is `content` (the same
    /// allocation, not an equal text); whether it was there. Bounds hold
    /// after.
    pub fn remove(&mut self, content: &Arc<str>) -> bool {
        let Some(index) = self
            .messages
            .iter()
            .position(|m| Arc::ptr_eq(&m.content, content))
        else {
            return false;
        };
        if let Some(removed) = self.messages.remove(index) {
            self.chars -= removed.content.chars().count();
        }
        self.files.remove(index);
        self.enforce_bounds();
        true
    }

    /// Replaces the text of the message whose content is `content` (the
    /// same allocation, not an equal text) with `now`, keeping its place
    /// and role (an edited message); whether it was there. Bounds hold
    /// after.
    pub fn replace(&mut self, content: &Arc<str>, now: Arc<str>) -> bool {
        let Some(message) = self
            .messages
            .iter_mut()
            .find(|m| Arc::ptr_eq(&m.content, content))
        else {
            return false;
        };
        self.chars = self.chars - message.content.chars().count() + now.chars().count();
        message.content = now;
        self.enforce_bounds();
        true
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.files.clear();
        self.evicted.clear();
        self.chars = 0;
    }

    /// Appends a message, then drops the oldest until both bounds hold.
    pub fn push(&mut self, role: Role, content: Arc<str>) {
        self.push_with_files(role, content, Vec::new());
    }

    /// [`History::push`] for a message the user sent files with.
    pub fn push_with_files(&mut self, role: Role, content: Arc<str>, files: Vec<StoredFile>) {
        self.chars += content.chars().count();
        self.messages.push_back(ChatMessage::new(role, content));
        self.files.push_back(files.into_boxed_slice());
        self.enforce_bounds();
    }

    /// The messages dropped to keep the bounds since the last call, oldest
    /// first.
    pub fn take_evicted(&mut self) -> Vec<ChatMessage> {
        std::mem::take(&mut self.evicted)
    }

    /// Replaces the text of the last user message, if it is still `was`
    /// (what was known of a photo when it was asked about, once its
    /// description arrives). Bounds hold after.
    pub fn rewrite_last_user(&mut self, was: &str, now: Arc<str>) {
        let Some(last) = self
            .messages
            .iter_mut()
            .rev()
            .find(|m| m.role == Role::User)
        else {
            return;
        };
        if &*last.content != was {
            return;
        }
        self.chars = self.chars - was.chars().count() + now.chars().count();
        last.content = now;
        self.enforce_bounds();
    }

    /// The prompt for a new user message: the system prompt, the history,
    /// then `user_text`. Content is shared, not copied.
    pub fn prompt(&self, system_prompt: &Arc<str>, user_text: &Arc<str>) -> Vec<ChatMessage> {
        let mut prompt = Vec::with_capacity(self.messages.len() + 2);
        prompt.push(ChatMessage::new(Role::System, Arc::clone(system_prompt)));
        prompt.extend(self.messages.iter().cloned());
        prompt.push(ChatMessage::new(Role::User, Arc::clone(user_text)));
        prompt
    }

    fn enforce_bounds(&mut self) {
        while self.messages.len() > self.max_messages
            || self.chars > self.max_chars
            || self
                .messages
                .front()
                .is_some_and(|m| m.role == Role::Assistant)
        {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.files.pop_front();
            self.chars -= oldest.content.chars().count();
            if self.evicted.len() == MAX_EVICTED {
                self.evicted.remove(0);
            }
            self.evicted.push(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(history: &History) -> Vec<String> {
        history.messages().map(|m| m.content.to_string()).collect()
    }

    #[test]
    fn message_bound_drops_the_oldest_turn() {
        let mut history = History::new(4, 1000);
        for i in 0..3 {
            history.push(Role::User, format!("q{i}").into());
            history.push(Role::Assistant, format!("a{i}").into());
        }
        assert_eq!(text(&history), ["q1", "a1", "q2", "a2"]);
    }

    #[test]
    fn char_bound_counts_characters_not_bytes() {
        let mut history = History::new(100, 6);
        history.push(Role::User, "ééé".into());
        history.push(Role::Assistant, "жжж".into());
        assert_eq!(history.chars(), 6);
        assert_eq!(history.len(), 2);
        history.push(Role::User, "x".into());
        // dropping "ééé" leaves an assistant message first, which goes too
        assert_eq!(text(&history), ["x"]);
        assert_eq!(history.chars(), 1);
    }

    #[test]
    fn an_oversized_message_empties_the_history() {
        let mut history = History::new(10, 5);
        history.push(Role::User, "123456".into());
        assert!(history.is_empty());
        assert_eq!(history.chars(), 0);
    }

    #[test]
    fn stored_form_round_trips_and_is_trimmed_on_load() {
        let mut history = History::new(10, 100);
        history.push(Role::User, "q".into());
        history.push(Role::Assistant, "a".into());
        let stored = history.to_stored();
        let again = History::from_stored(stored.clone(), 10, 100);
        assert_eq!(again.to_stored(), stored);
        // Tighter bounds after a config change apply on load.
        assert!(History::from_stored(stored, 1, 100).is_empty());
    }

    #[test]
    fn dropped_messages_are_kept_for_the_summary_until_taken() {
        let mut history = History::new(2, 1000);
        history.push(Role::User, "q1".into());
        history.push(Role::Assistant, "a1".into());
        history.push(Role::User, "q2".into());
        // q1 went for the bound, a1 for leading the history.
        let evicted: Vec<String> = history
            .take_evicted()
            .iter()
            .map(|m| m.content.to_string())
            .collect();
        assert_eq!(evicted, ["q1", "a1"]);
        assert!(history.take_evicted().is_empty());
        history.push(Role::Assistant, "a2".into());
        history.push(Role::User, "q3".into());
        history.clear();
        assert!(
            history.take_evicted().is_empty(),
            "cleared with the history"
        );
    }

    #[test]
    fn take_last_question_removes_the_last_exchange() {
        let mut history = History::new(10, 100);
        assert_eq!(history.take_last_question(), None);
        history.push(Role::User, "q1".into());
        history.push(Role::Assistant, "a1".into());
        history.push(Role::User, "q2".into());
        // q2 failed: no answer after it
        assert_eq!(history.take_last_question().as_deref(), Some("q2"));
        assert_eq!(history.chars(), 4);
        assert_eq!(history.take_last_question().as_deref(), Some("q1"));
        assert!(history.is_empty());
        assert_eq!(history.chars(), 0);
    }

    #[test]
    fn prompt_starts_with_the_system_prompt_and_ends_with_the_user() {
        let mut history = History::new(10, 100);
        history.push(Role::User, "q".into());
        history.push(Role::Assistant, "a".into());
        let prompt = history.prompt(&"sys".into(), &"new".into());
        let roles: Vec<Role> = prompt.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(&*prompt[0].content, "sys");
        assert_eq!(&*prompt[3].content, "new");
    }

    #[test]
    fn replace_finds_the_turn_by_allocation_not_by_text() {
        let mut history = History::new(10, 100);
        let first: Arc<str> = "same".into();
        let second: Arc<str> = "same".into();
        history.push(Role::User, Arc::clone(&first));
        history.push(Role::Assistant, "a".into());
        history.push(Role::User, Arc::clone(&second));
        assert!(history.replace(&second, "edited text".into()));
        assert_eq!(text(&history), ["same", "a", "edited text"]);
        assert_eq!(history.chars(), 4 + 1 + 11);
        // The replaced allocation is no longer there.
        assert!(!history.replace(&second, "again".into()));
        assert!(!history.replace(&"same".into(), "other".into()));
    }
}

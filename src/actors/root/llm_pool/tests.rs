//! The LLM pool on its own, with its real neighbours (one breaker per
//! provider and the persistence actor on a temp store), driven through
//! [`LlmPoolHandle`] against loopback OpenAI-compatible fakes. On the real
//! clock: a socket cannot be served on a paused one (tokio advances a
//! paused clock whenever the runtime waits, so every HTTP timeout would
//! fire at once).

use std::sync::Arc;
use std::time::Duration;

use llmgram_fakes::{FakeLlm, LlmReply};
use ractor::{Actor, ActorCell};

use super::{LlmPool, LlmPoolHandle, Overrides};
use crate::actors::Child;
use crate::actors::root::breaker::{Breaker, BreakerArgs, BreakerStatus};
use crate::actors::test_support::{self, TestDeps};
use crate::llm::{ChatMessage, LlmError, Role};

struct Pool {
    t: TestDeps,
    actors: Vec<ActorCell>,
}

impl Pool {
    /// The pool, its breakers and persistence, for the providers `config`
    /// names.
    async fn start(instance: &str, config: &str) -> Self {
        let t = test_support::deps(instance, config).with_providers();
        let mut actors = vec![t.start_persistence().await];
        for (index, provider) in t.deps.llm.iter().enumerate() {
            let args = BreakerArgs {
                provider: Arc::from(provider.name()),
                config: t.deps.config.breaker.clone(),
            };
            let name = t.deps.directory.name(Child::breaker(index));
            let (breaker, _) = Actor::spawn(Some(name), Breaker, args)
                .await
                .expect("breaker starts");
            actors.push(breaker.get_cell());
        }
        let name = t.deps.directory.name(Child::LlmPool);
        let (pool, _) = Actor::spawn(
            Some(name),
            LlmPool,
            crate::actors::root::llm_pool_args(&t.deps),
        )
        .await
        .expect("pool starts");
        actors.push(pool.get_cell());
        Self { t, actors }
    }

    fn handle(&self) -> LlmPoolHandle<'_> {
        self.t.deps.directory.llm_pool()
    }

    async fn ask(&self, text: &str) -> Result<String, LlmError> {
        let prompt = [ChatMessage::new(Role::User, text)];
        self.handle()
            .complete(&prompt, &Overrides::default(), None)
            .await
            .map(|completion| completion.text)
    }

    fn stop(self) {
        for actor in self.actors.into_iter().rev() {
            actor.stop(None);
        }
    }
}

fn primary(llm: &FakeLlm) -> String {
    format!("llm.base_url = {:?}\nllm.model = \"m1\"\n", llm.base_url())
}

fn fallback(llm: &FakeLlm) -> String {
    format!(
        "[[llm.fallback]]\nname = \"second\"\nbase_url = {:?}\nmodel = \"m2\"\n",
        llm.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_calls_are_in_flight_than_llm_max_concurrency() {
    let llm = FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(150));
    let pool = Arc::new(
        Pool::start(
            "pool-bound",
            &format!("{}llm.max_concurrency = 2\n", primary(&llm)),
        )
        .await,
    );
    let asks: Vec<_> = (0..6)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.ask(&format!("q{i}")).await })
        })
        .collect();
    for (i, ask) in asks.into_iter().enumerate() {
        let answer = ask.await.expect("task").expect("answered");
        assert_eq!(answer, format!("answer to: q{i}"));
    }
    assert_eq!(llm.request_count(), 6);
    assert_eq!(
        llm.max_in_flight(),
        2,
        "the bound was not reached or not kept"
    );
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_in_order_then_is_skipped_while_open() {
    let first = FakeLlm::start().await;
    let second = FakeLlm::start().await;
    first.script(vec![
        LlmReply::status(500, None),
        LlmReply::status(500, None),
    ]);
    let config = format!(
        "{}llm.retry.max_attempts = 1\nbreaker.window = 4\nbreaker.min_calls = 2\n\
         breaker.open_for = \"1h\"\nbreaker.first_probe_after = \"1h\"\n{}",
        primary(&first),
        fallback(&second)
    );
    let pool = Pool::start("pool-fallback", &config).await;
    for i in 0..2 {
        let answer = pool.ask(&format!("f{i}")).await.expect("answered");
        assert_eq!(answer, format!("answer to: f{i}"));
    }
    assert_eq!((first.request_count(), second.request_count()), (2, 2));
    assert!(matches!(
        pool.t.deps.directory.breaker(0).status().await,
        Ok(BreakerStatus::Open { .. })
    ));
    // Open: the primary is not asked at all; the fallback answers.
    let answer = pool.ask("f2").await.expect("answered");
    assert_eq!(answer, "answer to: f2");
    assert_eq!((first.request_count(), second.request_count()), (2, 3));
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_provider_failing_the_caller_gets_a_classified_error() {
    let first = FakeLlm::start().await;
    let second = FakeLlm::start().await;
    first.script(vec![LlmReply::status(500, None)]);
    second.script(vec![LlmReply::status(400, None)]);
    let config = format!(
        "{}llm.retry.max_attempts = 1\n{}",
        primary(&first),
        fallback(&second)
    );
    let pool = Pool::start("pool-all-fail", &config).await;
    let error = pool.ask("nobody").await.expect_err("no provider answered");
    assert_eq!(
        (first.request_count(), second.request_count()),
        (1, 1),
        "each provider asked once, in order"
    );
    // Classified, with the last provider's own failure kept for the logs.
    assert!(
        matches!(
            &error,
            LlmError::NoProvider { last: Some(last), .. }
                if matches!(**last, LlmError::Rejected { status: 400, .. })
        ),
        "{error:?}"
    );
    pool.stop();
}

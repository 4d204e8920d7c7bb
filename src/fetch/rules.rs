//! The rules of one transfer, without I/O: what to do when a source opens, sends a piece,
//! ends, breaks off, is too slow or fails verification. The loop in `fetch` feeds these events
//! in and carries out the [`Step`] it gets back (emptying the part file, opening a source,
//! installing, failing); it also publishes progress to readers whenever [`Rules::take_publish`]
//! says the generation, the total or the start of the stream changed.
//!
//! In short:
//! - Upstream is the last source, so its failures end the transfer (after resumes, bounded by
//!   progress and [`MAX_ATTEMPTS`]). Any other source (a seed disk, a peer) is left for the
//!   next one when it fails, with the blame it earned ([`Blame`]).
//! - Bytes of a content-addressed item (metadata names its checksum) survive a change of
//!   source: the whole is verified at the end. Other items start over.
//! - Readers never get two versions spliced together. A restart from byte 0 whose new bytes may
//!   equal the old ones asks the loop to compare them ([`Restart::Compare`]); a difference
//!   bumps the generation, and readers of an older generation that sent bytes are cut. Bytes
//!   known to be bad cut their readers at once ([`Restart::Cut`]), so clients that join later
//!   follow the next source undisturbed.
//!
//! Not here: files, sockets, clocks (deadlines are the loop's), or which source comes next
//! (`fetch::plan`, `Fetcher::next_source`).

use crate::fetch::FetchError;
use crate::upstream::{BadStart, UpstreamError};

/// Upstream attempts one transfer makes at most (resumes and restarts included).
pub const MAX_ATTEMPTS: u32 = 16;

/// Readers' message when upstream sent another version of the file under them.
pub const CHANGED: &str =
    "upstream sent the file anew mid-transfer; this answer is aborted, ask again";

/// Which kind of source bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The configured mirrors: the last resort, retried and resumed.
    Upstream,
    /// A seed disk or a peer: verified like upstream, abandoned for the next source on failure.
    Other,
}

/// Why a source is left for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    /// It could not deliver (unreachable, broke off, no such file): noted.
    Failed(String),
    /// It sent bytes that are not the file: put aside.
    BadBytes(String),
    /// It sent slower than its minimum pace: put aside.
    TooSlow(String),
}

/// How to empty the part file before going on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// Nobody was told of the old bytes: just empty the file.
    Quiet,
    /// Readers may hold the old bytes, and the new ones may be the same: compare them as they
    /// come (report the result to [`Rules::appended`]).
    Compare,
    /// The old bytes are known bad: the generation has moved on already, and readers that sent
    /// any are cut with this message.
    Cut(String),
}

/// What the loop does after an event.
#[derive(Debug)]
pub enum Next {
    /// Go on reading this body.
    Read,
    /// Open the same source again, from the part file's length.
    Resume,
    /// Leave this source (blamed) and open the next one.
    OtherSource(Blame),
    /// Every byte is there and verified: install.
    Install,
    /// Give up; `keep_part`: leave the partial file for a later resume.
    Fail { error: FetchError, keep_part: bool },
}

/// The answer to one event: first empty the part file if `restart` says so, then `next`.
#[derive(Debug)]
pub struct Step {
    pub restart: Option<Restart>,
    pub next: Next,
}

impl Step {
    fn next(next: Next) -> Step {
        Step {
            restart: None,
            next,
        }
    }
}

/// The state of one transfer's rules.
#[derive(Debug)]
pub struct Rules {
    /// Metadata names a checksum: bytes from any source can be resumed and checked at the end.
    content_addressed: bool,
    /// Upstream failures without progress tolerated in a row.
    retries: u32,
    kind: Kind,
    /// The current source, for messages.
    source: String,
    /// Bytes in the part file.
    written: u64,
    /// Most bytes ever held: progress is measured against it, so a mirror that breaks off at
    /// the same point after every restart from zero cannot keep us looping.
    best: u64,
    failures_without_progress: u32,
    attempts: u32,
    generation: u32,
    /// Why readers of an earlier generation were cut.
    cut: Option<String>,
    /// The total readers were first told (`Some(None)`: told it is unknown).
    told: Option<Option<u64>>,
    /// Length of the file being received, when known.
    total: Option<u64>,
    /// Readers have been told the stream started.
    announced: bool,
    /// Upstream validators vouch for the bytes held (a resume can be checked with If-Range).
    validated: bool,
    /// The part file holds bytes from a source other than upstream.
    foreign: bool,
    /// Something readers must hear changed.
    publish: bool,
}

impl Rules {
    /// A transfer that starts with `held` bytes already in its part file (from an earlier run;
    /// `validated` when upstream validators vouch for them).
    pub fn new(content_addressed: bool, retries: u32, held: u64, validated: bool) -> Rules {
        Rules {
            content_addressed,
            retries,
            kind: Kind::Upstream,
            source: String::new(),
            written: held,
            best: held,
            failures_without_progress: 0,
            attempts: 0,
            generation: 0,
            cut: None,
            told: None,
            total: None,
            announced: held > 0,
            validated,
            foreign: false,
            publish: false,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }
    pub fn total(&self) -> Option<u64> {
        self.total
    }
    pub fn generation(&self) -> u32 {
        self.generation
    }
    pub fn cut(&self) -> Option<&str> {
        self.cut.as_deref()
    }
    pub fn announced(&self) -> bool {
        self.announced
    }
    /// The total readers were first told, if they were told one.
    #[cfg(test)]
    pub fn told_total(&self) -> Option<u64> {
        self.told.flatten()
    }

    /// Whether readers must hear of a change (the stream started, a new generation, another
    /// total); reading clears it.
    pub fn take_publish(&mut self) -> bool {
        std::mem::take(&mut self.publish) && self.announced
    }

    /// A source was chosen (`name` for messages).
    pub fn use_source(&mut self, kind: Kind, name: impl Into<String>) {
        self.kind = kind;
        self.source = name.into();
    }

    /// A source other than upstream could not be opened.
    pub fn open_failed(&mut self, why: String) -> Step {
        Step {
            restart: self.restart_unless_content_addressed(),
            next: Next::OtherSource(Blame::Failed(why)),
        }
    }

    /// Upstream answered a resume with an error status: what we hold does not fit its file.
    pub fn resume_refused(&mut self) -> Step {
        self.validated = false;
        Step {
            restart: Some(self.restart_plain()),
            next: Next::Resume,
        }
    }

    /// Upstream could not be used at all (`error`).
    pub fn upstream_failed(&mut self, error: UpstreamError) -> Step {
        Step::next(Next::Fail {
            error: error.into(),
            keep_part: self.written > 0,
        })
    }

    /// A source opened a body. `total`: the length it announced; `resumed`: it continues
    /// from [`Rules::written`] (else it sends the whole file); `expected_size`: what metadata
    /// says; `validated`: upstream validators came with it.
    pub fn opened(
        &mut self,
        total: Option<u64>,
        resumed: bool,
        expected_size: Option<u64>,
        validated: bool,
    ) -> Step {
        let restart = (!resumed && self.written > 0).then(|| self.restart_plain());
        self.validated = validated;
        if let (Some(want), Some(said)) = (expected_size, total)
            && want != said
        {
            let what = format!("announced {said} bytes, metadata says {want}");
            return match self.kind {
                Kind::Other => Step {
                    restart,
                    next: Next::OtherSource(Blame::BadBytes(what)),
                },
                Kind::Upstream => Step {
                    restart,
                    next: Next::Fail {
                        error: FetchError::Verify(format!("{} {what}", self.source)),
                        keep_part: false,
                    },
                },
            };
        }
        let total = expected_size.or(total);
        if self.told.is_some_and(|t| t != total) {
            // Another length than readers were told: they must not end cleanly.
            self.new_generation(CHANGED.to_string());
        }
        self.told.get_or_insert(total);
        self.total = total;
        self.publish = true;
        Step {
            restart,
            next: Next::Read,
        }
    }

    /// The first bytes of a body that starts at byte 0 were checked against what the file name
    /// promises. Readers hear of the stream only once they look right, so a refused body is a
    /// clean error answer rather than a cut one.
    pub fn first_bytes(&mut self, check: Result<(), BadStart>) -> Step {
        match (check, self.kind) {
            (Ok(()), _) => {
                if !self.announced {
                    self.announced = true;
                    self.publish = true;
                }
                Step::next(Next::Read)
            }
            (Err(_), Kind::Other) => Step::next(Next::OtherSource(Blame::BadBytes(
                "sent something that is not the named file".into(),
            ))),
            (Err(BadStart::Html), Kind::Upstream) => Step::next(Next::Fail {
                error: UpstreamError::Html.into(),
                keep_part: false,
            }),
            (Err(BadStart::NotA(what)), Kind::Upstream) => Step::next(Next::Fail {
                error: FetchError::Verify(format!(
                    "{} sent something that is not {what}; not stored",
                    self.source
                )),
                keep_part: false,
            }),
        }
    }

    /// A piece of `len` bytes arrived; before it is written.
    pub fn piece(&mut self, len: u64) -> Step {
        match self.total {
            Some(t) if self.written + len > t => {
                let what = format!("sent more than the {t} bytes expected");
                match self.kind {
                    Kind::Other => {
                        let why = format!("{} sent more bytes than the file has", self.source);
                        Step {
                            restart: Some(self.restart_bad(why)),
                            next: Next::OtherSource(Blame::BadBytes(what)),
                        }
                    }
                    Kind::Upstream => Step::next(Next::Fail {
                        error: FetchError::Verify(format!("{} {what}", self.source)),
                        keep_part: false,
                    }),
                }
            }
            _ => Step::next(Next::Read),
        }
    }

    /// A piece was written. `diverged`: a comparison asked for by [`Restart::Compare`] found
    /// bytes that differ from those readers may have sent.
    pub fn appended(&mut self, len: u64, diverged: bool) {
        self.written += len;
        if self.kind == Kind::Other {
            self.foreign = true;
        }
        if diverged {
            self.new_generation(CHANGED.to_string());
        }
    }

    /// The source sent slower than its minimum pace.
    pub fn too_slow(&mut self, why: String) -> Step {
        Step {
            restart: self.restart_unless_content_addressed(),
            next: Next::OtherSource(Blame::TooSlow(why)),
        }
    }

    /// A client now waits for a transfer that a peer was sending as background work: ask the
    /// same source again, from where it is, as interactive (so the peer hurries too). Nothing
    /// is wrong with the bytes held.
    pub fn promoted(&mut self) -> Step {
        Step::next(Next::Resume)
    }

    /// Background work must stop for now: keep what was received (the next attempt resumes
    /// from it) and end the transfer.
    pub fn held(&mut self, why: crate::uplink::Hold) -> Step {
        Step::next(Next::Fail {
            error: FetchError::Held(why),
            keep_part: true,
        })
    }

    /// The body ended cleanly: `Some` step when it ended short of its length (a break),
    /// `None` when the bytes are ready to be verified.
    pub fn ended(&mut self) -> Option<Step> {
        match self.total {
            Some(t) if self.written < t => {
                Some(self.broke(format!("body ended after {} of {t} bytes", self.written)))
            }
            _ => None,
        }
    }

    /// The body broke off (a reset, a stall, an error).
    pub fn broke(&mut self, why: String) -> Step {
        if self.kind == Kind::Other {
            // The next source continues where this one stopped (for content-addressed items:
            // the whole is checked at the end).
            return Step {
                restart: self.restart_unless_content_addressed(),
                next: Next::OtherSource(Blame::Failed(why)),
            };
        }
        self.attempts += 1;
        if self.written > self.best {
            self.best = self.written;
            self.failures_without_progress = 0;
        } else {
            self.failures_without_progress += 1;
        }
        if self.failures_without_progress > self.retries || self.attempts > MAX_ATTEMPTS {
            return Step::next(Next::Fail {
                error: FetchError::Interrupted(why),
                keep_part: true,
            });
        }
        let restart = (!self.validated && !self.content_addressed && self.written > 0).then(|| {
            // Nothing to check a resume against: start over.
            self.publish = true;
            self.restart_plain()
        });
        Step {
            restart,
            next: Next::Resume,
        }
    }

    /// The whole body is in: `result` of checking it against the metadata, `compare_pending`
    /// when a [`Restart::Compare`] never reached the length of the old bytes (the new file is
    /// shorter than what readers may have sent).
    pub fn verified(&mut self, result: Result<(), String>, compare_pending: bool) -> Step {
        if compare_pending {
            self.new_generation(CHANGED.to_string());
        }
        let what = match result {
            Ok(()) => return Step::next(Next::Install),
            Err(what) => what,
        };
        match self.kind {
            Kind::Other => {
                let why = format!("the bytes {} sent failed verification", self.source);
                Step {
                    restart: Some(self.restart_bad(why)),
                    next: Next::OtherSource(Blame::BadBytes(what)),
                }
            }
            Kind::Upstream if self.foreign => {
                // Upstream resumed what a peer or seed that broke off had sent, and the whole
                // does not verify: those bytes were bad. Once more, from zero, upstream alone.
                self.foreign = false;
                let why = "bytes another source sent failed verification".to_string();
                Step {
                    restart: Some(self.restart_bad(why)),
                    next: Next::Resume,
                }
            }
            Kind::Upstream => Step::next(Next::Fail {
                error: FetchError::Verify(what),
                keep_part: false,
            }),
        }
    }

    fn new_generation(&mut self, why: String) {
        self.generation += 1;
        self.cut = Some(why);
        self.publish = true;
    }

    /// Empties the part file; readers that may hold its bytes get them compared.
    fn restart_plain(&mut self) -> Restart {
        self.written = 0;
        if self.told.is_some() {
            Restart::Compare
        } else {
            Restart::Quiet
        }
    }

    fn restart_unless_content_addressed(&mut self) -> Option<Restart> {
        (!self.content_addressed && self.written > 0).then(|| self.restart_plain())
    }

    /// Empties a part file whose bytes are known bad; their readers are cut now.
    fn restart_bad(&mut self, why: String) -> Restart {
        self.written = 0;
        let msg = format!("{why}; this answer is aborted, ask again");
        self.new_generation(msg.clone());
        Restart::Cut(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(content_addressed: bool) -> Rules {
        let mut r = Rules::new(content_addressed, 3, 0, false);
        r.use_source(Kind::Upstream, "upstream");
        r
    }

    fn stream(r: &mut Rules, total: u64, bytes: u64) {
        assert!(matches!(
            r.opened(Some(total), true, None, true).next,
            Next::Read
        ));
        assert!(matches!(r.first_bytes(Ok(())).next, Next::Read));
        assert!(matches!(r.piece(bytes).next, Next::Read));
        r.appended(bytes, false);
    }

    #[test]
    fn a_clean_transfer_installs() {
        let mut r = upstream(true);
        stream(&mut r, 100, 100);
        assert!(r.take_publish(), "readers hear of the stream");
        assert!(!r.take_publish());
        assert!(r.ended().is_none());
        assert!(matches!(r.verified(Ok(()), false).next, Next::Install));
        assert_eq!(r.generation(), 0);
    }

    #[test]
    fn upstream_breaks_are_resumed_until_progress_stops() {
        let mut r = upstream(true);
        stream(&mut r, 100, 10);
        // Progress each time: resumed, however often (up to MAX_ATTEMPTS).
        for i in 0..5 {
            r.appended(1, false);
            let s = r.broke(format!("cut {i}"));
            assert!(s.restart.is_none(), "content-addressed bytes are kept");
            assert!(matches!(s.next, Next::Resume));
        }
        // No progress: retries (3) more, then give up and keep the part file.
        for _ in 0..3 {
            assert!(matches!(r.broke("stuck".into()).next, Next::Resume));
        }
        match r.broke("stuck".into()).next {
            Next::Fail {
                error: FetchError::Interrupted(_),
                keep_part: true,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attempts_are_bounded_even_with_progress() {
        let mut r = upstream(true);
        stream(&mut r, 1000, 1);
        for _ in 0..MAX_ATTEMPTS {
            assert!(matches!(r.broke("x".into()).next, Next::Resume));
            r.appended(1, false);
        }
        assert!(matches!(r.broke("x".into()).next, Next::Fail { .. }));
    }

    #[test]
    fn a_resume_without_validators_or_checksum_starts_over() {
        let mut r = upstream(false);
        assert!(matches!(
            r.opened(Some(100), true, None, false).next,
            Next::Read
        ));
        r.first_bytes(Ok(()));
        r.appended(40, false);
        let s = r.broke("cut".into());
        assert_eq!(s.restart, Some(Restart::Compare), "readers may hold them");
        assert!(matches!(s.next, Next::Resume));
        assert_eq!(r.written(), 0);
        // With validators, the resume is checked by If-Range instead.
        let mut v = upstream(false);
        v.opened(Some(100), true, None, true);
        v.first_bytes(Ok(()));
        v.appended(40, false);
        assert!(v.broke("cut".into()).restart.is_none());
    }

    #[test]
    fn a_whole_file_sent_to_a_resume_restarts_and_compares() {
        let mut r = Rules::new(true, 3, 50, true);
        r.use_source(Kind::Upstream, "upstream");
        let s = r.opened(Some(100), false, None, true);
        assert_eq!(s.restart, Some(Restart::Quiet), "nobody was told yet");
        let mut r = upstream(true);
        stream(&mut r, 100, 50);
        let s = r.opened(Some(100), false, None, true);
        assert_eq!(s.restart, Some(Restart::Compare));
        assert_eq!(r.generation(), 0, "maybe the same bytes: compared, not cut");
        r.appended(50, true);
        assert_eq!(r.generation(), 1, "they differed");
        assert_eq!(r.cut(), Some(CHANGED));
        assert!(r.take_publish());
    }

    #[test]
    fn another_length_than_readers_were_told_is_a_new_generation() {
        let mut r = upstream(false);
        stream(&mut r, 100, 10);
        r.broke("cut".into());
        r.opened(Some(120), false, None, true);
        assert_eq!(r.generation(), 1);
        assert_eq!(r.told_total(), Some(100));
        assert_eq!(r.total(), Some(120));
    }

    #[test]
    fn upstream_that_lies_about_size_or_content_fails_without_a_part_file() {
        let mut r = upstream(true);
        match r.opened(Some(99), true, Some(100), true).next {
            Next::Fail {
                error: FetchError::Verify(m),
                keep_part: false,
            } => assert!(m.contains("99"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut r = upstream(true);
        stream(&mut r, 100, 100);
        assert!(matches!(
            r.piece(1).next,
            Next::Fail {
                keep_part: false,
                ..
            }
        ));
        let mut r = upstream(true);
        r.opened(Some(100), true, None, true);
        assert!(matches!(
            r.first_bytes(Err(BadStart::Html)).next,
            Next::Fail {
                error: FetchError::Upstream(UpstreamError::Html),
                ..
            }
        ));
        assert!(!r.take_publish(), "a refused body is never announced");
        let mut r = upstream(true);
        stream(&mut r, 100, 100);
        assert!(matches!(
            r.verified(Err("bad".into()), false).next,
            Next::Fail {
                error: FetchError::Verify(_),
                keep_part: false
            }
        ));
    }

    #[test]
    fn a_peer_that_fails_is_left_for_the_next_source_with_its_blame() {
        let mut r = Rules::new(true, 3, 0, false);
        r.use_source(Kind::Other, "peer x");
        assert!(matches!(
            r.open_failed("unreachable".into()),
            Step {
                restart: None,
                next: Next::OtherSource(Blame::Failed(_))
            }
        ));
        stream(&mut r, 100, 30);
        // Broke off: the bytes are kept for the next source (content-addressed).
        let s = r.broke("reset".into());
        assert!(s.restart.is_none());
        assert!(matches!(s.next, Next::OtherSource(Blame::Failed(_))));
        let s = r.too_slow("trickle".into());
        assert!(matches!(s.next, Next::OtherSource(Blame::TooSlow(_))));
        assert!(matches!(
            r.first_bytes(Err(BadStart::NotA("an RPM"))).next,
            Next::OtherSource(Blame::BadBytes(_))
        ));
        // Without a checksum a change of source starts over.
        let mut r = Rules::new(false, 3, 0, false);
        r.use_source(Kind::Other, "seed");
        stream(&mut r, 100, 30);
        assert_eq!(r.broke("reset".into()).restart, Some(Restart::Compare));
    }

    #[test]
    fn bad_bytes_from_a_peer_cut_their_readers_at_once() {
        let mut r = Rules::new(true, 3, 0, false);
        r.use_source(Kind::Other, "peer x");
        stream(&mut r, 100, 100);
        r.take_publish();
        let s = r.verified(Err("sha256 differs".into()), false);
        match (&s.restart, &s.next) {
            (Some(Restart::Cut(m)), Next::OtherSource(Blame::BadBytes(_))) => {
                assert!(m.contains("peer x"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.generation(), 1);
        assert_eq!(r.written(), 0);
        assert!(r.take_publish(), "readers hear of the cut now");
        // The next source's bytes are the new generation's: nothing more is cut.
        r.use_source(Kind::Upstream, "upstream");
        stream(&mut r, 100, 100);
        assert!(matches!(r.verified(Ok(()), false).next, Next::Install));
        assert_eq!(r.generation(), 1);
        // Too many bytes from a peer: the same.
        let mut r = Rules::new(true, 3, 0, false);
        r.use_source(Kind::Other, "peer y");
        stream(&mut r, 100, 90);
        let s = r.piece(20);
        assert!(matches!(s.restart, Some(Restart::Cut(_))));
        assert!(matches!(s.next, Next::OtherSource(Blame::BadBytes(_))));
    }

    #[test]
    fn upstream_that_resumed_bad_peer_bytes_starts_over_once() {
        let mut r = Rules::new(true, 3, 0, false);
        r.use_source(Kind::Other, "peer x");
        stream(&mut r, 100, 40);
        assert!(r.too_slow("trickle".into()).restart.is_none());
        r.use_source(Kind::Upstream, "upstream");
        r.opened(Some(100), true, None, true);
        r.appended(60, false);
        let s = r.verified(Err("bad".into()), false);
        assert!(matches!(s.restart, Some(Restart::Cut(_))));
        assert!(matches!(s.next, Next::Resume));
        r.opened(Some(100), true, None, true);
        r.appended(100, false);
        assert!(matches!(
            r.verified(Err("bad".into()), false).next,
            Next::Fail { .. }
        ));
    }

    #[test]
    fn a_shorter_file_than_readers_got_is_a_new_generation() {
        let mut r = upstream(false);
        stream(&mut r, 100, 100);
        r.verified(Ok(()), true);
        assert_eq!(r.generation(), 1);
    }

    #[test]
    fn held_bytes_are_announced_and_resumed() {
        let mut r = Rules::new(true, 3, 70, false);
        r.use_source(Kind::Upstream, "upstream");
        assert!(r.announced());
        assert_eq!(r.written(), 70);
        let s = r.opened(Some(100), true, Some(100), true);
        assert!(s.restart.is_none());
        assert!(r.take_publish());
    }
}

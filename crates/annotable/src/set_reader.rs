//! Reads an object version's whole annotation set — for `serve`'s object-level events and for
//! every version `backfill` walks — without holding more of it than the read budget allows
//! (docs/correctness.md §8).
//!
//! The set is listed first (names and sizes: small whatever the payloads), then its payloads
//! are read in parts of at most `part_bytes` listed bytes, each part's bytes reserved against
//! the [`ReadBudget`] before it is read. A set that fits one part becomes one
//! [`Observed::Version`], exactly as a whole read would; a larger one becomes a sequence of
//! [`Observed::SetPart`]s under the listing's sequence number, the last one carrying the
//! OBJECT_RESET. The caller commits the parts in order and acknowledges (or checkpoints) only
//! after the last, so a crash between parts leaves true PUT rows and redoes the read.

use annotation_source::{
    AnnotationSource, ReadBudget, Reservation, SetPart, SourceError, VersionListing,
};
use s3_events::{EventContext, ObjectRef};

use crate::rows::{Observation, Observed, sequence_number};

/// An observation and the budget its payloads hold until its rows are committed.
#[derive(Debug)]
pub struct Part {
    /// The observation.
    pub observation: Observation,
    /// Dropped once its rows are committed (or abandoned).
    pub held: Reservation,
    /// Whether it ends its set (the earlier parts must be committed first).
    pub last: bool,
}

/// A version's listing, before any payload is read.
#[derive(Debug)]
pub enum ListedSet {
    /// The version does not exist: this observation says so.
    Gone(Box<Observation>),
    /// The version's annotations, listed at `at_nanos`.
    Listed {
        /// Names and sizes.
        listing: VersionListing,
        /// When the listing was sent.
        at_nanos: u64,
    },
}

impl ListedSet {
    /// Payload bytes listed (0 when gone).
    pub fn bytes(&self) -> u64 {
        match self {
            ListedSet::Gone(_) => 0,
            ListedSet::Listed { listing, .. } => listing.bytes(),
        }
    }
}

/// Lists and reads sets part by part.
#[derive(Debug, Clone)]
pub struct SetReader {
    source: AnnotationSource,
    writer_id: String,
    part_bytes: u64,
    budget: Option<ReadBudget>,
}

impl SetReader {
    /// Reads in parts of at most `part_bytes`, reserving each part against `budget` (`None`:
    /// the caller bounds what it reads at once some other way).
    pub fn new(
        source: AnnotationSource,
        writer_id: impl Into<String>,
        part_bytes: u64,
        budget: Option<ReadBudget>,
    ) -> Self {
        SetReader {
            source,
            writer_id: writer_id.into(),
            part_bytes: part_bytes.max(1),
            budget,
        }
    }

    /// Lists `object`'s annotations (ListObjectAnnotations; no payload).
    pub async fn list(
        &self,
        object: &ObjectRef,
        context: Option<&EventContext>,
    ) -> Result<ListedSet, SourceError> {
        let listed = self.source.list_version(object).await?;
        match listed.value {
            Some(listing) => Ok(ListedSet::Listed {
                listing,
                at_nanos: listed.at_nanos,
            }),
            None => {
                // The rows belong to the version S3 answered for, when it said.
                let object = match (&object.version_id, listed.version_id) {
                    (None, Some(v)) if v != "null" => ObjectRef {
                        version_id: Some(v),
                        ..object.clone()
                    },
                    _ => object.clone(),
                };
                Ok(ListedSet::Gone(Box::new(self.observation(
                    object,
                    listed.at_nanos,
                    Observed::Version(None),
                    context,
                ))))
            }
        }
    }

    /// The parts of a listed set, read one at a time by [`SetParts::next`].
    pub fn read(&self, set: ListedSet, context: Option<&EventContext>) -> SetParts {
        let state = match set {
            ListedSet::Gone(observation) => State::Gone(Some(observation)),
            ListedSet::Listed { listing, at_nanos } => {
                let parts = listing.parts(self.part_bytes);
                State::Reading {
                    count: parts.len(),
                    parts: parts.into_iter().enumerate(),
                    listing,
                    at_nanos,
                }
            }
        };
        SetParts {
            reader: self.clone(),
            context: context.cloned(),
            state,
        }
    }

    fn observation(
        &self,
        object: ObjectRef,
        at_nanos: u64,
        observed: Observed,
        context: Option<&EventContext>,
    ) -> Observation {
        Observation {
            object,
            sequence_number: sequence_number(at_nanos, &self.writer_id),
            observed,
            context: context.cloned(),
        }
    }
}

/// A set being read part by part.
#[derive(Debug)]
pub struct SetParts {
    reader: SetReader,
    context: Option<EventContext>,
    state: State,
}

#[derive(Debug)]
enum State {
    Gone(Option<Box<Observation>>),
    Reading {
        listing: VersionListing,
        at_nanos: u64,
        parts: std::iter::Enumerate<std::vec::IntoIter<(Vec<String>, u64)>>,
        count: usize,
    },
    Done,
}

impl SetParts {
    /// The next part (reserving its bytes first), or `None` after the last. A part with
    /// `last: true` ends the set: commit the earlier ones first.
    pub async fn next(&mut self) -> Result<Option<Part>, SourceError> {
        let reader = &self.reader;
        let context = self.context.as_ref();
        let (listing, at_nanos, parts, count) = match &mut self.state {
            State::Done => return Ok(None),
            State::Gone(observation) => {
                let part = observation.take().map(|observation| Part {
                    observation: *observation,
                    held: Reservation::none(),
                    last: true,
                });
                self.state = State::Done;
                return Ok(part);
            }
            State::Reading {
                listing,
                at_nanos,
                parts,
                count,
            } => (listing, *at_nanos, parts, *count),
        };
        let Some((i, (names, bytes))) = parts.next() else {
            self.state = State::Done;
            return Ok(None);
        };
        let mut held = match &reader.budget {
            Some(budget) => budget.reserve(bytes).await,
            None => Reservation::none(),
        };
        let annotations = match reader.source.read_part(listing, &names).await? {
            SetPart::Present(annotations) => annotations,
            // Gone since the listing: that read's stamp is later than every part written.
            SetPart::Gone { at_nanos } => {
                let observation = reader.observation(
                    listing.read_from.clone(),
                    at_nanos,
                    Observed::Version(None),
                    context,
                );
                self.state = State::Done;
                return Ok(Some(Part {
                    observation,
                    held: Reservation::none(),
                    last: true,
                }));
            }
        };
        held.shrink_to(annotations.iter().map(|a| a.text_value.len() as u64).sum());
        let last = i + 1 == count;
        let observed = match count {
            1 => Observed::Version(Some(annotations)),
            _ => Observed::SetPart { annotations, last },
        };
        let observation =
            reader.observation(listing.read_from.clone(), at_nanos, observed, context);
        if last {
            self.state = State::Done;
        }
        Ok(Some(Part {
            observation,
            held,
            last,
        }))
    }
}

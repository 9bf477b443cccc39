//! Call pickup, and the ≤ 11 masquerades it is made of: a device taking
//! another channel's place.
//!
//! A phone picks up a call ringing at a colleague's extension by dialing a
//! code (directed `PickupChan()`/`Pickup()`, FreePBX `**1002`; group
//! pickup `*8`). The PBX creates a channel for the picking phone (on 12+
//! with a Linkedid of its own), answers it, and puts it in the ringing
//! channel's place: the caller's `Dial`/`Queue` sees its destination
//! answer, and the ringing phone's channel hangs up (cause 26, answered
//! elsewhere).
//! - Asterisk 12+ says so with `Pickup` (the picking channel's block, the
//!   ringing one as `Target*`); the picking channel keeps its Uniqueid and
//!   the caller's `DialEnd ANSWER` names it.
//! - Asterisk 1.8–11 send `Pickup` (two names) and then `Masquerade` the
//!   picking channel (clone) into the ringing one (original); 1.6 only
//!   masquerades.
//!
//! Either way the model says: the picking channel joins the ringing call
//! (its own provisional call or Linkedid is folded in), the picking phone
//! answers the call at that moment — its leg goes straight to `answered`,
//! it is not in `extensions_rung` (it dialed a code, it did not ring) — and
//! the ringing phone's leg ends with its channel.

use super::{PbxCalls, Str};
use crate::model::{ModelEvent, State};
use crate::normalize::canonical::ChanState;
use crate::normalize::channel::Party;
use crate::normalize::NormalizerConfig;
use compact_str::ToCompactString;

impl PbxCalls {
    /// Channel `picker` picked up the call ringing on channel `target`.
    pub(super) fn pickup(
        &mut self,
        cfg: &NormalizerConfig,
        picker: &str,
        target: &str,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        let (Some(p), Some(g)) = (self.chans.get(picker), self.chans.get(target)) else {
            return;
        };
        // (The ringing channel may have hung up already: the `Pickup` and
        // its hangup travel on different channels' topics.)
        if picker == target || !p.live() {
            return;
        }
        let (from, into) = (p.call.clone(), g.call.clone());
        if from != into {
            // Whatever the Linkedids say (12+ changes the picker's only
            // when the call ends), the picker is in the ringing call now.
            // (The picker's old call becomes an alias of the ringing one.)
            self.merge(&into, &from, t);
        }
        let Some(call) = self.calls.get_mut(&into) else {
            return;
        };
        // The ringing phone's leg is over when its own channel is (a ring
        // group's Local half now carries the picker).
        for leg in call
            .legs
            .iter_mut()
            .filter(|l| l.state != Some(State::Hungup) && l.chans.iter().any(|c| c == target))
        {
            leg.chans.retain(|c| c == target);
        }
        call.last_activity = t;
        if let Some(p) = self.chans.get_mut(picker) {
            // Not rung: it dialed the pickup code.
            p.offered = true;
            p.tied = true;
            if p.up_at.is_none() {
                p.up_at = Some(t);
                p.state = ChanState::Up;
            }
        }
        self.pending.retain(|(u, _, _)| u != picker);
        self.answered(cfg, picker, t, false, out);
    }

    /// ≤ 11 `Masquerade`: the clone's device (phone, trunk) goes into the
    /// original channel, which keeps its Uniqueid and takes the clone's name
    /// (the `Rename`s that follow); the clone becomes a zombie holding the
    /// original's former device, and hangs up. What the model knows about
    /// each device moves with it: party, caller ids, state and answer, dial
    /// outcome, leg membership, being the call's first channel. An answered
    /// phone masqueraded into a ringing channel is a pickup (1.6 reports
    /// nothing else; 1.8–11 sent `Pickup` first).
    pub(super) fn masquerade(
        &mut self,
        cfg: &NormalizerConfig,
        clone: &str,
        original: &str,
        t: f64,
        out: &mut Vec<ModelEvent>,
    ) {
        self.tie(clone, original, t);
        let (Some(c), Some(o)) = (self.chans.get(clone), self.chans.get(original)) else {
            return;
        };
        // A zombie's device has moved already (a duplicated event).
        if clone == original || !c.live() || !o.live() || c.zombie || o.zombie || c.call != o.call {
            return;
        }
        let picked = o.offered
            && o.up_at.is_none()
            && c.up_at.is_some()
            && matches!(c.party, Party::Extension(_));
        let session = o.call.clone();
        self.regrouped = true;
        if let Some(mut o) = self.chans.remove(original) {
            if let Some(c) = self.chans.get_mut(clone) {
                c.swap_device(&mut o);
                c.zombie = true;
            }
            self.chans.insert(original.to_compact_string(), o);
        }
        if let Some(call) = self.calls.get_mut(&session) {
            let swap = |u: &mut Str| {
                if u == clone {
                    *u = original.to_compact_string();
                } else if u == original {
                    *u = clone.to_compact_string();
                }
            };
            for leg in &mut call.legs {
                leg.chans.iter_mut().for_each(&swap);
            }
            swap(&mut call.root);
            call.last_activity = t;
        }
        if picked {
            self.answered(cfg, original, t, false, out);
        }
    }
}

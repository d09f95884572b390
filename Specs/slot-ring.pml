/*
 * slot-ring.pml -- Promela model of the DPFSCore request-slot / completion-ring
 * protocol (checked with spin; driver: tools/check-spin-model.sh).
 *
 * Swift counterparts (module DPFSCore):
 *   SlotState            -> mtype FREE .. COMPLETED, array slotState[]
 *   SlotEvent            -> mtype FETCH .. PUBLISH, inline slotEvent()
 *   SlotTable            -> slotState[] + slotGen[] (+ the poller's freeList)
 *   CompletionRing.push  -> inline ringPush()   (called by backend threads)
 *   CompletionRing.pop   -> inline ringPop()    (called by the poller only)
 *   Poller.step          -> one iteration of the outer loop in proctype Poller
 *   backend threads      -> proctype Backend (NBACKENDS instances)
 *
 * Everything named ghost*, req*, occupied[], replyWritten[], *Count is GHOST
 * state: it does not exist in the Swift code, it only records history so the
 * assertions / LTL formula can talk about it.
 *
 * Compile-time switches (pass as `spin -a -DNAME`):
 *   FAULTY_BACKEND            a backend may push the same token twice (at most
 *                             DUP_BUDGET times in total); the correct poller must
 *                             detect every duplicate and never apply it.
 *   MUTANT_NO_TOKEN_CHECK     BUG: poller applies backendDone to whatever slot a
 *                             token names, without the generation/state check.
 *   MUTANT_NO_GEN_CHECK       BUG: poller checks state == awaitingBackend but not
 *                             the generation (ABA on slot reuse).
 *   MUTANT_PUSH_NO_SEQCHECK   BUG: push claims a position with a plain
 *                             load + store of enqueuePos, no sequence check / CAS.
 *   MUTANT_POP_NO_SEQCHECK    BUG: pop trusts enqueuePos instead of the cell's
 *                             published sequence number.
 *   MUTANT_DROP_COMPLETION    BUG: poller discards valid completions as stale
 *                             (safety still holds; only the liveness check fails).
 * The mutants exist so that the check script can prove the model is able to
 * fail; the correct model is the one without any MUTANT_* define.
 */

/* ---------------------------------------------------------------- sizes -- */
#define NSLOTS     3      /* request slots in the SlotTable                     */
#define NBACKENDS  2      /* backend threads                                    */
#define C          4      /* CompletionRing capacity: power of two, >= NSLOTS   */
#ifndef MAXREQ
#define MAXREQ     5      /* total requests the poller fetches (keeps it finite) */
#endif
#if MAXREQ < 3 || MAXREQ > 6
#error "MAXREQ must be 3..6 (the ltl formula at the end lists requests 0..5)"
#endif
#ifndef DUP_BUDGET
#define DUP_BUDGET 1      /* FAULTY_BACKEND: how many duplicate pushes in total */
#endif

/* ------------------------------------------------------- SlotState/Event -- */
mtype = { FREE, FETCHED, DECODED, DISPATCHED, AWAITING, COMPLETED };       /* SlotState */
mtype = { FETCH, DECODE, DECODE_FAILED, DISPATCH,
          BACKEND_DONE, BACKEND_PENDING, PUBLISH };                        /* SlotEvent */

/* ------------------------------------------------------------ SlotTable -- */
/* Written only by the poller (single-writer invariant of SlotTable); that is
 * why all slot-table updates below may be grouped into one atomic step.       */
mtype slotState[NSLOTS];
byte  slotGen[NSLOTS];        /* bumped by PUBLISH; in Swift a wrapping counter.
                                 Here it is bounded by MAXREQ, so no wrap.      */

/* Hand-off poller -> backend: the token (slot index, generation).  One FIFO per
 * backend; capacity NSLOTS, so a send can never block (at most NSLOTS slots
 * can be awaitingBackend at the same time).                                    */
chan toBackend[NBACKENDS] = [NSLOTS] of { byte, byte };

/* -------------------------------------------------------- CompletionRing -- */
/* Vyukov bounded MPMC queue, used MPSC.  Positions are plain unbounded
 * integers in Swift (wrapping UInt); the model bounds the number of pushes
 * (MAXREQ + DUP_BUDGET), so bytes never wrap and `seq - pos` below is the
 * exact signed difference that Swift computes with Int(bitPattern:).          */
typedef Cell {
  byte sequence;              /* atomic in Swift (acquire loads/release stores) */
  byte vslot;                 /* value = token; plain (non-atomic) memory,     */
  byte vgen                   /*   ordered only by `sequence`                   */
};
Cell cells[C];
byte enqueuePos;              /* atomic, shared by all producers (CAS)          */
byte dequeuePos;              /* consumer-only: the poller is the single consumer */

/* ------------------------------------------------------------ ghost state -- */
bool occupied[C];             /* cell holds a value that has not been popped    */
bool pushFoundFull;           /* some push returned FULL                        */
bool illegalTransition;       /* slotEvent() saw an event not legal in a state  */
bool replyWritten[NSLOTS];    /* reply for the slot's CURRENT generation written */
byte reqOf[NSLOTS];           /* which request currently occupies the slot      */
bool reqFetched[MAXREQ];      /* request r has been fetched                     */
byte reqCompletions[MAXREQ];  /* how often request r reached `completed`        */
byte fetchedCount;
byte completedCount;
byte staleCompletions;        /* tokens the poller recognised as stale/doubled  */
byte dupsPushed;              /* FAULTY_BACKEND: duplicate tokens pushed        */
byte dupBudget = DUP_BUDGET;
byte tokensIssued;            /* tokens handed to backends by the poller       */

/* ---------------------------------------------------------------- slotEvent
 * The SlotState machine (SlotTable.apply(SlotEvent) in Swift).  Executed by
 * the poller only, so one atomic step.  Checks, in this order:
 *   - property 1: a request reaches `completed` at most once;
 *   - property 3: backendDone is only applied once the reply for the slot's
 *     current generation has been written (a stale token would violate this);
 *   - the transition is one of the 8 legal ones.                              */
inline slotEvent(s, ev) {
  atomic {
    if
    :: (ev == DECODE_FAILED || ev == BACKEND_DONE) ->
         assert(reqCompletions[reqOf[s]] == 0);      /* never completed twice */
         reqCompletions[reqOf[s]]++;
         completedCount++
    :: else -> skip
    fi;
    if
    :: ev == BACKEND_DONE -> assert(replyWritten[s]) /* never before the reply */
    :: else -> skip
    fi;
    if
    :: slotState[s] == FREE       && ev == FETCH           -> slotState[s] = FETCHED
    :: slotState[s] == FETCHED    && ev == DECODE          -> slotState[s] = DECODED
    :: slotState[s] == FETCHED    && ev == DECODE_FAILED   -> slotState[s] = COMPLETED
    :: slotState[s] == DECODED    && ev == DISPATCH        -> slotState[s] = DISPATCHED
    :: slotState[s] == DISPATCHED && ev == BACKEND_DONE    -> slotState[s] = COMPLETED
    :: slotState[s] == DISPATCHED && ev == BACKEND_PENDING -> slotState[s] = AWAITING
    :: slotState[s] == AWAITING   && ev == BACKEND_DONE    -> slotState[s] = COMPLETED
    :: slotState[s] == COMPLETED  && ev == PUBLISH         -> slotState[s] = FREE;
                                                             slotGen[s]++
    :: else -> illegalTransition = true
    fi;
    assert(!illegalTransition)
  }
}

/* ---------------------------------------------------------- ringPush ------
 * CompletionRing.push(token).  Caller must declare locals pos, seq, won and
 * the push counter n (decremented by the final step).
 * Every shared access is its own step (load of enqueuePos, acquire load of
 * cell.sequence, the CAS, the value store, the release store of sequence), so
 * spin explores every interleaving of the two producers with each other and
 * with the consumer.  Only the CAS is an atomic{} block: that is what the
 * hardware gives us.                                                          */
inline ringPush(vs, vg) {
#ifndef MUTANT_PUSH_NO_SEQCHECK
  pos = enqueuePos;                              /* enqueuePos.load(relaxed)   */
  do
  :: seq = cells[pos % C].sequence;              /* cell.sequence.load(acquire)*/
     if
     :: (seq - pos) == 0 ->                      /* cell is free for lap pos/C */
        atomic {                                 /* enqueuePos.compareExchange */
          if                                     /*   (expected: pos, pos+1)   */
          :: enqueuePos == pos -> enqueuePos = pos + 1; won = true
          :: else -> pos = enqueuePos            /* failure returns current    */
          fi
        };
        if
        :: won -> break
        :: else -> skip
        fi
     :: (seq - pos) < 0 ->                       /* previous lap not consumed  */
        pushFoundFull = true; break              /*   -> return FULL           */
     :: (seq - pos) > 0 ->                       /* someone else took pos      */
        pos = enqueuePos                         /*   -> reload and retry      */
     fi
  od;
  assert(!pushFoundFull);         /* property 2b: a legitimate push never FULL */
#else
  /* MUTANT: claim the position with a non-atomic read-modify-write and never
   * look at the sequence: two producers can claim the same cell.             */
  pos = enqueuePos;
  enqueuePos = pos + 1;
#endif
  /* cell.value = token (plain store).  The ghost check is property 2: the
   * cell we own must not still hold an unconsumed value.                      */
  atomic {
    assert(!occupied[pos % C]);
    occupied[pos % C] = true;
    cells[pos % C].vslot = vs;
    cells[pos % C].vgen  = vg
  };
  atomic {
    cells[pos % C].sequence = pos + 1;           /* release: publish the value */
    /* the rest is local bookkeeping of the calling backend: count the
     * push done and reset dead locals, so that equal states compare equal */
    pos = 0; seq = 0; won = false;
    n--;
    if
    :: n == 0 -> vs = 0; vg = 0
    :: else -> skip
    fi
  }
}

/* ----------------------------------------------------------- ringPop ------
 * CompletionRing.pop().  Single consumer, so dequeuePos is a plain variable
 * (no CAS, unlike the MPMC original).  Caller declares pos, seq.             */
inline ringPop(got, vs, vg) {
#ifndef MUTANT_POP_NO_SEQCHECK
  atomic {                                       /* dequeuePos is consumer-owned,
                                                    so reading it is invisible
                                                    to others and can share the
                                                    step with the acquire load */
    pos = dequeuePos;
    seq = cells[pos % C].sequence                /* cell.sequence.load(acquire)*/
  };
  if
  :: seq == pos + 1 ->                           /* a producer published it    */
#else
  pos = dequeuePos;
  if
  :: enqueuePos > pos ->                         /* MUTANT: "claimed" is taken
                                                    for "published"            */
#endif
     atomic {                                    /* v = cell.value             */
       assert(occupied[pos % C]);                /* property 2: never read a
                                                    cell that holds no value   */
       occupied[pos % C] = false;
       vs = cells[pos % C].vslot;
       vg = cells[pos % C].vgen
     };
     atomic {
       cells[pos % C].sequence = pos + C;        /* release: cell free for the
                                                    producer of the next lap   */
       dequeuePos = pos + 1;                     /* consumer-owned: same step  */
       got = true
     }
  :: else -> got = false                         /* EMPTY (or claimed but not
                                                    yet published: retry later)*/
  fi;
  pos = 0; seq = 0
}

/* Poller's validity test for a popped token (Poller.step, drain phase).      */
#if defined(MUTANT_NO_TOKEN_CHECK)
#define TOKEN_VALID(s, g)  true
#elif defined(MUTANT_NO_GEN_CHECK)
#define TOKEN_VALID(s, g)  (slotState[s] == AWAITING)
#elif defined(MUTANT_DROP_COMPLETION)
#define TOKEN_VALID(s, g)  false
#else
#define TOKEN_VALID(s, g)  (slotGen[s] == g && slotState[s] == AWAITING)
#endif

/* ================================================================ Poller == */
proctype Poller() {
  chan freeList = [NSLOTS] of { byte };          /* owned by the poller only   */
  byte s, b, pos, seq, tslot, tgen;
  bool got, quiescent;

  atomic {
    for (s : 0 .. NSLOTS - 1) { freeList!s };
    s = 0
  };

  do
  :: /* ---------------- Poller.step ---------------- */

     /* (1) drain the completion ring */
     do
     :: ringPop(got, tslot, tgen);
        if
        :: got ->
           atomic {
             if
             :: TOKEN_VALID(tslot, tgen) -> slotEvent(tslot, BACKEND_DONE)
             :: else -> staleCompletions++      /* stale / doubled: ignored  */
             fi;
             got = false; tslot = 0; tgen = 0
           }
        :: else -> break
        fi
     od;

     /* (2) fetch + (3) publish.  Both touch only poller-owned state (the
      * slot table, the free list, ghosts); the only action another thread can
      * observe is the hand-off of a token to a backend (channel send), and
      * local actions commute with everything the other threads do.  So the
      * rest of Poller.step is a single atomic step.                         */
     atomic {
       /* (2) fetch: take a free slot for a new request, if a request is
        * waiting (nondeterministic: none may have arrived yet).            */
       if
       :: fetchedCount < MAXREQ && len(freeList) > 0 ->
          if
          :: true -> skip                        /* no request this time      */
          :: true ->
             freeList?s;
             reqOf[s] = fetchedCount;
             reqFetched[fetchedCount] = true;
             fetchedCount++;
             slotEvent(s, FETCH);
             if
             :: true ->                          /* malformed: error reply     */
                slotEvent(s, DECODE_FAILED)
             :: true ->
                slotEvent(s, DECODE);
                slotEvent(s, DISPATCH);
                if
                :: true ->                       /* backend answered inline    */
                   replyWritten[s] = true;
                   slotEvent(s, BACKEND_DONE)
                :: true ->                       /* answered later by a thread */
                   slotEvent(s, BACKEND_PENDING);
                   select (b : 0 .. NBACKENDS - 1);
                   assert(nfull(toBackend[b]));  /* hand-off never blocks      */
                   toBackend[b]!s, slotGen[s];   /* token = (slot, generation) */
                   tokensIssued++;
                   b = 0
                fi
             fi
          fi
       :: else -> skip
       fi;

       /* (3) publish every completed slot: completed -> free, generation+1 */
       for (s : 0 .. NSLOTS - 1) {
         if
         :: slotState[s] == COMPLETED ->
            slotEvent(s, PUBLISH);
            replyWritten[s] = false;             /* new generation: no reply  */
            freeList!s
         :: else -> skip
         fi
       };
       s = 0;

       /* end of the bounded run (ghost): all requests fetched, all slots back
        * on the free list, nothing in flight anywhere.  Once true it stays
        * true (every other process is blocked on an empty channel).        */
       quiescent = (fetchedCount == MAXREQ && len(freeList) == NSLOTS
                    && dequeuePos == tokensIssued + dupsPushed)
     };
     if
     :: quiescent -> break
     :: else -> skip
     fi
  od;

  /* property 1 (nothing lost, nothing doubled) and property 3 (every
   * duplicate was detected, no valid completion was mistaken for one).      */
  atomic {
    assert(fetchedCount == MAXREQ && completedCount == fetchedCount);
    for (s : 0 .. NSLOTS - 1) { assert(slotState[s] == FREE) };
    for (b : 0 .. MAXREQ - 1) { assert(reqCompletions[b] == 1) };
    assert(staleCompletions == dupsPushed)
  }
}

/* =============================================================== Backend == */
proctype Backend(byte id) {
  byte s, g, pos, seq;
  byte n;                                        /* pushes still to do: 1 or 2 */
  bool won;

end:                                             /* idle here is a valid end  */
  do
  :: atomic {
       toBackend[id]?s, g;                       /* take a token               */
       replyWritten[s] = true;                   /* write the reply.  Observed
                                                    only through the token we
                                                    push below, so it can share
                                                    the receive step.          */
       n = 1;
#ifdef FAULTY_BACKEND
       if                                        /* FAULT: push it twice       */
       :: dupBudget > 0 -> dupBudget--; dupsPushed++; n = 2
       :: true -> skip
       fi
#endif
     };
     do
     :: n > 0 -> ringPush(s, g)                  /* CompletionRing.push(token);
                                                    its last step does n--     */
     :: else -> break
     od
  od
}

init {
  byte i;
  atomic {
    for (i : 0 .. C - 1) { cells[i].sequence = i };
    for (i : 0 .. NSLOTS - 1) { slotState[i] = FREE };
    i = 0;
    run Poller();
    for (i : 0 .. NBACKENDS - 1) { run Backend(i) };
    i = 0
  }
}

/* ============================================================== liveness ==
 * Property 4: every fetched request is eventually completed.  Verified with
 * weak fairness (pan -a -f): without it, a run in which the poller spins in
 * its loop forever while a backend holding a token is never scheduled would
 * be a (meaningless) counter-example.                                       */
#define DONE(r)     (reqCompletions[r] > 0)
#define RESPONDS(r) ([] (reqFetched[r] -> <> DONE(r)))
ltl live {
     RESPONDS(0) && RESPONDS(1) && RESPONDS(2)
#if MAXREQ > 3
  && RESPONDS(3)
#endif
#if MAXREQ > 4
  && RESPONDS(4)
#endif
#if MAXREQ > 5
  && RESPONDS(5)
#endif
}

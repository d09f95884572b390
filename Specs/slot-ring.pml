/*
 * slot-ring.pml -- Promela model of the DPFSCore request-slot / completion-ring
 * protocol.  Checked with spin by tools/check-spin-model.sh; see
 * Specs/slot-ring-README.md.
 *
 * Swift counterparts (module DPFSCore):
 *   SlotState                -> mtype FREE .. COMPLETED, array slotState[]
 *   SlotEvent                -> mtype FETCH .. PUBLISH
 *   SlotTransitions / Poller.transition -> inline slotEvent()
 *   SlotTable (state, generation)       -> slotState[], slotGen[]
 *   CompletionToken (slotIndex, generation) -> the pair (slot, gen)
 *   CompletionRing.push      -> inline ringPush()  (backend threads)
 *   CompletionRing.pop       -> inline ringPop()   (the poller only)
 *   Poller.step              -> one iteration of the outer loop of Poller:
 *       drainCompletions, fetchAndDispatch (+ decodeAndDispatch, dispatch,
 *       finishHandler), publishCompleted
 *   Poller.freeList/freeCount, completedList/completedCount -> same names
 *   PollerMetrics.staleCompletions -> staleCompletions
 *   backend threads          -> proctype Backend (NBACKENDS instances)
 *
 * GHOST state (the "ghost state" block below: occupied[], replyWritten[],
 * completedGen[], ghost*, dupsPushed, tokensIssued, ...) does not exist in
 * the Swift code.  It records history so that assertions and the LTL formula
 * can talk about it.
 *
 * Memory model: spin explores interleavings, i.e. sequential consistency.
 * That is sound for this protocol because every cross-thread hand-off of
 * plain data (cell.value, the reply buffer) is ordered by a release store /
 * acquire load of cell.sequence in the Swift code.  The model keeps each
 * shared access a separate step, so spin sees every interleaving of them.
 *
 * Compile-time switches (pass as `spin -a -DNAME[=value]`):
 *   FAULTY_BACKEND            a backend may push the same token twice (at most
 *                             DUP_BUDGET times in total); the correct poller must
 *                             detect every duplicate and never apply it.
 *   MAXREQ=k                  requests in the bounded run (default 5).
 *   NSLOTS=n (1..4), C=c      slots / ring cells (default 3 / 4).
 *   BATCH_MAX=b               fetches per Poller.step at most (default 2).
 * Deliberate bugs, used by the script to show that the model CAN fail:
 *   MUTANT_NO_TOKEN_CHECK     poller applies backendDone to whatever slot a
 *                             token names, without the generation/state check.
 *   MUTANT_NO_GEN_CHECK       poller checks state == awaitingBackend but not
 *                             the generation (ABA on slot reuse).
 *   MUTANT_PUSH_NO_SEQCHECK   push claims a position with a plain load + store
 *                             of enqueuePosition: no sequence check, no CAS.
 *   MUTANT_POP_NO_SEQCHECK    pop trusts enqueuePosition instead of the cell's
 *                             published sequence number.
 *   MUTANT_DROP_COMPLETION    poller discards valid completions as stale (safe,
 *                             but violates liveness).
 *   C=2 (with NSLOTS=3)       ring smaller than the slot count: FULL is possible.
 */

/* ---------------------------------------------------------------- sizes -- */
#ifndef NSLOTS
#define NSLOTS     3      /* PollerConfiguration.slotCount                     */
#endif
#define NBACKENDS  2      /* backend threads                                   */
#ifndef C
#define C          4      /* CompletionRing.capacity.  The engine uses         */
#endif                    /* max(2, 2 * slotCount); tools/check-spin-model.sh  */
                          /* reads that rule and checks the engine's sizing.    */
#ifndef MAXREQ
#define MAXREQ     5      /* requests fetched in total: keeps the run finite   */
#endif
#if NSLOTS < 1 || NSLOTS > 4
#error "NSLOTS must be 1..4 (the ltl formula at the end lists slots 0..3)"
#endif
#ifndef BATCH_MAX
#define BATCH_MAX  2      /* PollerConfiguration.batchMax                      */
#endif
#ifndef DUP_BUDGET
#define DUP_BUDGET 1      /* FAULTY_BACKEND: duplicate pushes in total         */
#endif

/* ------------------------------------------------------- SlotState/Event -- */
mtype = { FREE, FETCHED, DECODED, DISPATCHED, AWAITING, COMPLETED };  /* SlotState */
mtype = { FETCH, DECODE, DECODE_FAILED, DISPATCH,
          BACKEND_DONE, BACKEND_PENDING, PUBLISH };                   /* SlotEvent */

/* ------------------------------------------------------------ SlotTable -- */
/* Only the poller reads or writes these (the single-writer rule of the slot
 * table).  That is why the poller may update them in atomic steps: no other
 * thread can observe the intermediate states.                                */
mtype slotState[NSLOTS];
byte  slotGen[NSLOTS];    /* +1 on publish.  UInt32 wrapping in Swift; bounded
                             by MAXREQ here, so it never wraps.               */

/* Hand-off poller -> backend of the token (slot, generation): in Swift the
 * backend receives it in Backend.handle(_:reply:token:).  One FIFO per
 * backend, capacity NSLOTS, so the send never blocks (at most NSLOTS slots
 * can wait for a backend at once).                                           */
chan toBackend[NBACKENDS] = [NSLOTS] of { byte, byte };

/* -------------------------------------------------------- CompletionRing -- */
/* Vyukov's bounded MPMC queue, used MPSC.  Swift positions are UInt64 and
 * wrap; here the number of pushes is bounded (MAXREQ + DUP_BUDGET), so byte
 * positions never wrap and `seq - pos` is the exact signed difference that
 * Swift computes as Int64(bitPattern: sequence &- position).                 */
typedef Cell {
  byte sequence;          /* Atomic<UInt64>: acquire loads, release stores    */
  byte vslot;             /* value = CompletionToken.rawValue: plain memory,  */
  byte vgen               /*   ordered only through `sequence`               */
};
Cell cells[C];
byte enqueuePosition;     /* atomic, shared by all producers (CAS)            */
byte dequeuePosition;     /* written by the single consumer (the poller) only */

/* ------------------------------------------------------------ ghost state -- */
bool occupied[C];             /* the cell holds a value not yet popped        */
bool pushFoundFull;           /* a legitimate push returned false (FULL)      */
bool illegalTransition;       /* slotEvent() got an event illegal in a state  */
bool replyWritten[NSLOTS];    /* the reply of the slot's CURRENT generation
                                 has been written                            */
bool completedGen[NSLOTS];    /* the request the slot holds (its current
                                 generation) has reached `completed`; cleared
                                 by the next FETCH.  A slot holds one request
                                 per generation, so "no (slot, generation)
                                 completes twice" is "no request completes
                                 twice".                                     */
byte ghostFetched;            /* requests fetched so far                      */
byte ghostCompleted;          /* transitions into `completed` so far          */
byte staleCompletions;        /* PollerMetrics.staleCompletions (real in Swift) */
byte tokensIssued;            /* tokens handed to backends                    */
byte dupsPushed;              /* FAULTY_BACKEND: duplicate pushes decided     */
byte dupsDropped;             /* ... of which push() returned false (FULL)    */
byte dupBudget = DUP_BUDGET;

/* ----------------------------------------------------------- slotEvent ------
 * Poller.transition(index, event): the only place a slot's state changes.
 * It runs on the poller only, so it is one atomic step.  It also appends
 * slots that become `completed` to the poller's completedList, as the Swift
 * code does.  It checks, in this order:
 *   - property 1: a request reaches `completed` at most once;
 *   - property 3: backendDone is applied only after the reply of the slot's
 *     current generation has been written (a stale token breaks this);
 *   - the pair (state, event) is one of the 8 rows of Specs/slot-lifecycle.md.
 * Caller (Poller) declares completedList, completedCount.                    */
inline slotEvent(s, ev) {
  atomic {
    if
    :: (ev == DECODE_FAILED || ev == BACKEND_DONE) ->
         assert(!completedGen[s]);                   /* never completed twice */
         completedGen[s] = true;
         ghostCompleted++
    :: else -> skip
    fi;
    if
    :: ev == BACKEND_DONE -> assert(replyWritten[s]) /* never before its reply */
    :: else -> skip
    fi;
    if
    :: slotState[s] == FREE       && ev == FETCH           -> slotState[s] = FETCHED;
                                                             completedGen[s] = false
    :: slotState[s] == FETCHED    && ev == DECODE          -> slotState[s] = DECODED
    :: slotState[s] == FETCHED    && ev == DECODE_FAILED   -> slotState[s] = COMPLETED
    :: slotState[s] == DECODED    && ev == DISPATCH        -> slotState[s] = DISPATCHED
    :: slotState[s] == DISPATCHED && ev == BACKEND_DONE    -> slotState[s] = COMPLETED
    :: slotState[s] == DISPATCHED && ev == BACKEND_PENDING -> slotState[s] = AWAITING
    :: slotState[s] == AWAITING   && ev == BACKEND_DONE    -> slotState[s] = COMPLETED
    :: slotState[s] == COMPLETED  && ev == PUBLISH         -> slotState[s] = FREE;
                                                             slotGen[s]++
    :: else -> illegalTransition = true      /* Swift: preconditionFailure */
    fi;
    assert(!illegalTransition);
    if
    :: slotState[s] == COMPLETED ->
       completedList[completedCount] = s;
       completedCount++
    :: else -> skip
    fi
  }
}

/* ----------------------------------------------------------- ringPush -------
 * CompletionRing.push(token) -> Bool.  Each shared access is its own step:
 * the relaxed load of enqueuePosition, the acquire load of cell.sequence,
 * the CAS, the store of the value, the release store of the sequence.  So
 * spin tries every interleaving of the two producers with each other and
 * with the consumer.  The CAS is an atomic{} block because the hardware
 * makes it one.  Every other atomic{} block holds exactly one shared access,
 * plus ghost or local bookkeeping that no other thread can observe.
 *
 * mayFail: true only for a FAULTY_BACKEND's duplicate push.  If that push
 * finds the ring full, push returns false and the duplicate is simply lost,
 * which is harmless.  A legitimate push must never find the ring full
 * (property 2).
 * Caller (Backend) declares pos, seq, won, n (pushes still to do) and dup.  */
inline pushDone(vs, vg) {             /* local bookkeeping after a push:     */
  pos = 0; seq = 0; won = false;      /* count it, and reset dead locals so  */
  n--;                                /* that equal states compare equal     */
  if
  :: n == 0 -> vs = 0; vg = 0; dup = false
  :: else -> skip
  fi
}

inline ringPush(vs, vg, mayFail) {
#ifndef MUTANT_PUSH_NO_SEQCHECK
  pos = enqueuePosition;                         /* load(.relaxed)           */
  do
  :: seq = cells[pos % C].sequence;              /* sequence.load(.acquiring) */
     if
     :: (seq - pos) == 0 ->                      /* the cell is ours to take  */
        atomic {                                 /* compareExchange(expected:
                                                    pos, desired: pos + 1)   */
          if
          :: enqueuePosition == pos -> enqueuePosition = pos + 1; won = true
          :: else -> pos = enqueuePosition       /* failure: `original`       */
          fi
        };
        if
        :: won -> break
        :: else -> skip
        fi
     :: (seq - pos) < 0 ->                       /* last lap not consumed yet */
        break                                    /*   -> return false (FULL)  */
     :: (seq - pos) > 0 ->                       /* another producer took pos */
        pos = enqueuePosition                    /*   -> reload, retry        */
     fi
  od;
#else
  /* MUTANT: a non-atomic read-modify-write of enqueuePosition and no look at
   * the sequence, so two producers can claim the same cell.                  */
  pos = enqueuePosition;
  enqueuePosition = pos + 1;
  won = true;
#endif
  if
  :: won ->
     atomic {                                    /* cell.value = token        */
       assert(!occupied[pos % C]);               /* property 2: no overwrite  */
       occupied[pos % C] = true;
       cells[pos % C].vslot = vs;
       cells[pos % C].vgen  = vg
     };
     atomic {
       cells[pos % C].sequence = pos + 1;        /* store(.releasing): publish */
       pushDone(vs, vg)
     }
  :: else ->                                     /* push returned false       */
     atomic {
       if
       :: mayFail -> dupsDropped++               /* a duplicate: lost, fine   */
       :: else -> pushFoundFull = true
       fi;
       assert(!pushFoundFull);    /* property 2: a legitimate push never FULL */
       pushDone(vs, vg)
     }
  fi
}

/* ------------------------------------------------------------ ringPop -------
 * CompletionRing.pop().  There is one consumer, so dequeuePosition needs no
 * CAS (unlike Vyukov's MPMC pop).  Nobody else writes it, so the consumer's
 * load of it shares a step with the acquire load of the sequence.
 * Caller (Poller) declares pos, seq.                                         */
inline ringPop(got, vs, vg) {
#ifndef MUTANT_POP_NO_SEQCHECK
  atomic {
    pos = dequeuePosition;
    seq = cells[pos % C].sequence                /* sequence.load(.acquiring) */
  };
  if
  :: seq == pos + 1 ->                           /* a producer published it   */
#else
  pos = dequeuePosition;
  if
  :: enqueuePosition > pos ->                    /* MUTANT: "claimed" taken for
                                                    "published"              */
#endif
     atomic {                                    /* let value = cell.value    */
       assert(occupied[pos % C]);                /* property 2: the cell holds
                                                    a written, unread value  */
       occupied[pos % C] = false;
       vs = cells[pos % C].vslot;
       vg = cells[pos % C].vgen
     };
     atomic {
       cells[pos % C].sequence = pos + C;        /* store(.releasing): the cell
                                                    is free for the next lap */
       dequeuePosition = pos + 1;
       got = true
     }
  :: else ->                                     /* nil: empty, or claimed but
                                                    not yet published        */
#ifndef MUTANT_POP_NO_SEQCHECK
     assert(seq < pos + 1);                      /* diff > 0 would mean a second
                                                    consumer overtook us     */
#endif
     got = false
  fi;
  pos = 0; seq = 0
}

/* The check in Poller.drainCompletions.                                      */
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
  byte freeList[NSLOTS];        /* a stack; its top is freeList[freeCount-1] */
  byte freeCount;
  byte completedList[NSLOTS];   /* slots that became `completed` this step   */
  byte completedCount;
  byte s, b, i, pos, seq, tslot, tgen, drained, fetched;
  bool got, quiescent;

  atomic {                      /* lowest index on top, as in Poller.init    */
    for (i : 0 .. NSLOTS - 1) { freeList[i] = NSLOTS - 1 - i };
    freeCount = NSLOTS;
    i = 0
  };

  do
  :: /* ======================= Poller.step() ======================= */

     /* (1) drainCompletions: at most slotCount tokens per step.  Each pop is
      * a shared step; checking and applying the token is poller-local.      */
     do
     :: drained < NSLOTS ->
        ringPop(got, tslot, tgen);
        if
        :: got ->
           atomic {
             drained++;
             if
             :: TOKEN_VALID(tslot, tgen) ->
                slotEvent(tslot, BACKEND_DONE)   /* finishHandler            */
             :: else ->
                staleCompletions++               /* stale/doubled: ignored   */
             fi;
             got = false; tslot = 0; tgen = 0
           }
        :: else -> break
        fi
     :: else -> break
     od;

     /* (2) fetchAndDispatch and (3) publishCompleted.  They touch only
      * poller-owned data (slot table, free and completed lists, ghosts).
      * The one action another thread can see is the hand-off of a token to
      * a backend.  Local actions commute with everything the other threads
      * do, so the rest of the step is one atomic step.                      */
     atomic {
       drained = 0;

       /* (2) fetchAndDispatch: up to BATCH_MAX requests, while a slot is
        * free and the transport has one (nondeterministic: it may not).     */
       do
       :: fetched < BATCH_MAX && freeCount > 0 && ghostFetched < MAXREQ ->
          if
          :: true -> break                       /* transport.fetch: none    */
          :: true ->
             freeCount--;
             s = freeList[freeCount];
             freeList[freeCount] = 0;
             fetched++;
             ghostFetched++;
             slotEvent(s, FETCH);
             /* decodeAndDispatch */
             if
             :: true ->                          /* refused: error reply     */
                slotEvent(s, DECODE_FAILED)
             :: true ->
                slotEvent(s, DECODE);
                slotEvent(s, DISPATCH);
                /* dispatch: Backend.handle(request, reply, token) */
                if
                :: true ->                       /* .done: reply written now */
                   replyWritten[s] = true;
                   slotEvent(s, BACKEND_DONE)    /* finishHandler            */
                :: true ->                       /* .pending: a backend thread
                                                    got the token and will
                                                    push it when done        */
                   select (b : 0 .. NBACKENDS - 1);
                   assert(nfull(toBackend[b]));
                   toBackend[b]!s, slotGen[s];
                   tokensIssued++;
                   b = 0;
                   slotEvent(s, BACKEND_PENDING) /* after handle() returned; */
                                                 /* harmless that the backend
                                                    may already be running:
                                                    only this thread pops,
                                                    and only in a later step */
                fi
             fi;
             s = 0
          fi
       :: else -> break
       od;
       fetched = 0;

       /* (3) publishCompleted: completed -> free, generation + 1, back on
        * top of the free list, in completion order.                          */
       i = 0;
       do
       :: i < completedCount ->
          s = completedList[i];
          completedList[i] = 0;
          slotEvent(s, PUBLISH);
          replyWritten[s] = false;               /* new generation: no reply */
          freeList[freeCount] = s;
          freeCount++;
          i++
       :: else -> break
       od;
       completedCount = 0; i = 0; s = 0;

       /* End of the bounded run (ghost): all requests fetched, all slots
        * free, and every push that will ever happen (one per token, plus the
        * duplicates) has been popped.  Once true it stays true.             */
       quiescent = (ghostFetched == MAXREQ && freeCount == NSLOTS
                    && dequeuePosition == tokensIssued + dupsPushed - dupsDropped)
     };
     if
     :: quiescent -> break
     :: else -> skip
     fi
  od;

  /* property 1: nothing lost, nothing doubled.  property 3: every duplicate
   * was detected, and no valid completion was taken for one.                */
  atomic {
    assert(ghostFetched == MAXREQ && ghostCompleted == ghostFetched);
    for (i : 0 .. NSLOTS - 1) { assert(slotState[i] == FREE) };
    assert(staleCompletions == dupsPushed - dupsDropped)
  }
}

/* =============================================================== Backend == */
proctype Backend(byte id) {
  byte s, g, pos, seq;
  byte n;                                        /* pushes still to do: 1, 2 */
  bool won, dup;                                 /* dup: this token is pushed
                                                    twice (FAULTY_BACKEND)   */

end:                                             /* idle here: a valid end   */
  do
  :: atomic {
       toBackend[id]?s, g;                       /* take a token             */
       replyWritten[s] = true;                   /* write the reply.  Others see
                                                    it only through the token
                                                    pushed below, so it can
                                                    share this step.         */
       n = 1;
#ifdef FAULTY_BACKEND
       if                                        /* FAULT: push it twice     */
       :: dupBudget > 0 -> dupBudget--; dupsPushed++; n = 2; dup = true
       :: true -> skip
       fi
#endif
     };
     do
     :: n > 0 -> ringPush(s, g, dup && n == 1)   /* completions.push(token);
                                                    the 2nd push of a doubled
                                                    token may find it FULL   */
     :: else -> break
     od
  od
}

init {
  byte i;
  atomic {
    for (i : 0 .. C - 1) { cells[i].sequence = i };      /* Vyukov init      */
    for (i : 0 .. NSLOTS - 1) { slotState[i] = FREE };
    i = 0;
    run Poller();
    for (i : 0 .. NBACKENDS - 1) { run Backend(i) };
    i = 0
  }
}

/* ============================================================== liveness ==
 * Property 4: every fetched request is eventually completed.  A slot holds
 * one request from FETCH until it reaches COMPLETED (a generation), so this is
 * the per-slot response property
 *     [] (PENDING(s) -> <> !PENDING(s))     for every slot s,
 * where PENDING = fetched, decoded, dispatched or awaitingBackend.  A slot
 * leaves PENDING only by reaching COMPLETED (slotEvent asserts that no other
 * transition exists), and within one atomic step it cannot become PENDING
 * again, so every request that is fetched is eventually completed.
 * It is verified with weak fairness (pan -a -f).  Without fairness, a run
 * where the poller spins forever while a backend holding a token is never
 * scheduled is a counter-example; the check script shows that spin finds it
 * when -f is left out.                                                       */
#define PENDING(s)  (slotState[s] != FREE && slotState[s] != COMPLETED)
#define RESPONDS(s) ([] (PENDING(s) -> <> !PENDING(s)))
ltl live {
     RESPONDS(0)
#if NSLOTS > 1
  && RESPONDS(1)
#endif
#if NSLOTS > 2
  && RESPONDS(2)
#endif
#if NSLOTS > 3
  && RESPONDS(3)
#endif
}

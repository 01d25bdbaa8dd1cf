"""What profiling found where a target was missed: appended to `bench/RESULTS.md`.

The numbers here come from experiments run beside the benchmark on the same
machine (named below, repeatable from this package); the figures of the run
itself are in the table above them. The machine was shared with other work
while they were taken, so absolute numbers moved between runs; the ratios,
and before/after pairs taken interleaved in one process, are what to read.
"""

from __future__ import annotations

FINDINGS = """\
## Profiling findings and fixes

### Engine overhead (fixed in `engine/core.py`)

cProfile and pyinstrument of `Engine.fire_sync` against the hand-written floor
showed SQLAlchemy's work dominating, not the database: the engine built a new
Core statement (and its cache key) for the load, the versioned update, the
`max(seq)` query and the event insert on every fire, about 2.6x the floor's
SQLAlchemy CPU, plus one statement more than the floor. Fix (commit
"Engine: build the fire path's statements once"): the four statements are
built once at import with typed bind parameters, and the event's number is
taken inside the INSERT (`INSERT ... VALUES (..., (SELECT max(seq)+1 ...))
RETURNING seq`, with the old two-statement path kept for a database without
RETURNING). Interleaved before/after, same process:

| | before | after |
|---|---:|---:|
| `engine_overhead_ratio_sqlite` | 2.18-2.43 | 1.25-1.30 |
| `engine_overhead_ratio_postgresql` | 1.51-1.65 (target missed) | 1.07-1.22 |

What remains is python-statemachine: instantiating a machine per fire and
sending the event is ~55% / ~45% of its cost (`StateMachine.__init__` resolves
every callback again: 28 `resolve` calls per fire). Against a floor that also
builds its statements once, the engine is ~3x on SQLite and ~1.6x on
PostgreSQL (the figures' detail). A further step, not taken: keep one machine per flow and
thread and set `current_state_value` and the model's fields before each send.

### Support list, page 1,000 (fixed in `flows/recovery/support.py` and `engine/core.py`)

`SupportService._list` writes the keyset condition as
`created_at < :c OR (created_at = :c AND id < :id)`. Neither SQLite nor
PostgreSQL can start an index range from an OR, so page 1,000 scans the
`(created_at, id)` index from the newest row down and filters: ~35-47 ms p95
over a million attempts, against 2-3 ms for the same page with a row-value
condition `tuple_(attempt_t.c.created_at, attempt_t.c.id) < tuple_(created,
last_id)`, which both databases turn into an index range (figure detail
"row-value cursor query p95 ms"). Change in `_list`: replace the `or_(...)`
by that `tuple_` comparison (`from sqlalchemy import tuple_`). The first page
is 7-9 ms p95 on SQLite and 15-19 ms on PostgreSQL without any cursor: most
of it is the lazy `engine.sweep_sync()`
that every list call runs (three write transactions, one per deadline state)
and the audit insert; after the cursor fix the figure is expected at about
the first page's p95 (under 20 ms on SQLite, borderline on PostgreSQL here).
Dropping the per-call sweep (e.g. show an overdue live attempt as expired
when listing, and let `recovery sweep` or the dispatcher persist it) would
take the rest.

Applied: the row-value cursor, and `Engine.sweep_sync` now first asks the
live index whether anything is overdue in each deadline state (a read) and
opens no write transaction when nothing is. Full runs before/after:
`support_list_p95_ms_1m_sqlite` 34.2 -> 4.0 ms, `_postgresql` 40.9 -> 8.3 ms.

### Event loop while hashing (fixed in `flows/recovery/passwords.py`)

The figure sits at the target (24.3-27.5 ms in the final run; 34-64 ms in
runs earlier the same day while the machine was busier), against a 2.5-3 ms
p99 with nothing hashing. py-spy (`--gil` and `--idle`) on the server while
8 clients hash: the event
loop thread holds the GIL under half the time and the Argon2 threads almost
never (argon2-cffi releases it), so the GIL is not the cause; the loop waits
for a CPU. Two hashes at once with p=4 lanes run 8 native threads on 2
cores at the same priority as the loop. Experiment (`python -m bench.hashing
--nice 10`, interleaved): the same server with the Argon2 pool's threads at
nice 10 (Linux keeps nice per thread; libargon2's lane threads inherit it):

| | p99 GET /health while hashing | hashing requests answered |
|---|---:|---:|
| product as is | 34-64 ms | 124-168 per run pair |
| Argon2 threads at nice 10 | 15-17 ms | 128-151 per run pair |

Change in `Argon2Hasher._setup`: build the pool with
`ThreadPoolExecutor(max_concurrent, thread_name_prefix="argon2",
initializer=_lower_priority)` where `_lower_priority()` calls
`os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)` inside
`contextlib.suppress(AttributeError, OSError)` (not every OS has it).

Applied as described. Full runs before/after: `loop_p99_ms_while_hashing`
24.5 ms (24.3-27.5) -> 9.0 ms (8.9-9.3).

### HTTP floor route (fixed in `api/ratelimit.py`)

py-spy on `GET /bench/noop` under wrk: `RateLimitMiddleware.should_check_request`
hops to a worker thread on every request (7% of the loop's samples plus a
thread handoff), because `applies` in `rate_limit_config` is a sync function
and Litestar wraps sync `check_throttle_handler`s with `sync_to_thread`.
Declaring it `async def applies(request) -> bool` (it does no I/O) removes
the hop for every request, GETs included. The access log line per request
is another ~9% (formatting and the redaction filter).

Applied (`applies` is async). Full runs before/after: `http_floor_rps`
2,399 -> 3,663 req/s; the access log line is left as it is.

### Sweep (changed meanwhile by the engine's owner)

Before commit "Sweep batches run wholly in the database", the engine sent
each batch's 5,000 ids back in two IN lists: per-statement timing showed
~2.7 s of its 5.7 s outside the database on SQLite. The owner's change moved
that into the database. PostgreSQL's floor (one hand-written
`INSERT ... SELECT` + `UPDATE`) itself takes ~4-5 s on this shared machine
(the plain `UPDATE` of 100,000 rows with three indexes to maintain: ~4.7 s in
`EXPLAIN ANALYZE` under load), so `sweep_100k_s_postgresql` sits at the floor
times its ratio.

### Dispatch (batched in `engine/worker.py`, `engine/core.py`, `flows/password_recovery.py`)

Before (issue 17's first pass): timing every step of the dispatcher
in-process on PostgreSQL gave ~75 ms per email end to end, of which the SMTP
exchange ~30 ms, the `dispatch` fire ~17 ms, the throttle and account reads
~8 ms, rendering ~3 ms; pool sizes, more concurrent sends, bigger claims and
`synchronous_commit=off` each changed throughput by less than the noise
(48-63 emails/s). py-spy on one `recovery worker` emailing 2,000 requested
attempts (41 emails/s that day): the database threads' round trips held the
wall time (`Engine.fire_sync` 16 %, commits 7 %, the two throttle queries
4 %, one `links.store` transaction per email), while the worker used well
under one core: six transactions per email, each waited for.

Change: a `Job` may take its claimed attempts `together` (lists of one
attempt per subject, so an address's second request still sees its first);
the flow reads every throttle of a list with two queries and its accounts
with one, settles unknown and throttled addresses in one transaction, and
emails in chunks of 16 (the links of a chunk stored in one transaction, its
emails sent four at a time over kept connections, its outcomes recorded by
`Engine.fire_many_sync`: one transaction, the attempts read in one query,
the one-live rule settled once with one advisory-lock statement and one
query, a savepoint per fire only when a row moved under the batch). After,
same machine, same 3,000-email run: 156 emails/s on PostgreSQL with one
worker, 251 with two (1.61x), 203 on SQLite; per list of 64: throttles
8 ms, accounts 8 ms, rendering 87 ms, links 7 ms, sending 65 ms, outcomes
160 ms. The worker is now CPU-bound (19.0 s of CPU for a 19.3 s run), and
py-spy `--gil` splits its CPU into rendering and writing out the message
35 % (the standard library's header parsing and folding about half of it),
recording the outcomes 35 % (python-statemachine building a machine per fire
7 %, the effect's link check 7 % until its statement was built once, the
event insert 7 %, the update 3 %) and the SMTP exchange 19 %.

What the targets would need: 0.7x the persistent-connection floor is ~600
emails/s here, ~1.6 ms of CPU per email, and rendering plus writing out one
email with the `email` package alone costs ~1.9 ms. Reaching it needs
messages assembled without the package's header machinery and transitions
written with one statement per batch rather than per fire; not done.

Tried and dropped: pipelining the chunks (rendering the next while the
previous is sent and recorded) changed nothing measurable once the worker
was CPU-bound; kept for the time to inbox. On the request path, writing the
attempt, its first event and the totals in one statement (data-modifying
CTEs) on PostgreSQL halved `POST /api/recovery` (0.26x the bare floor
against 0.62x), leaving the totals out entirely gave 0.64-0.66x against
0.55-0.60x in the same pair of runs, and a 0.5 ms GIL switch interval gave
0.47-0.53x: the PostgreSQL request path waits on its commits, not on the CPU
(py-spy `--gil`: the server holds the GIL 44 % of the time under wrk).

### Request path: group commit (`engine/db.py`, `engine/core.py`)

The request path waited on one transaction per request (on SQLite one
writer thread, on PostgreSQL one commit each). Change: `Engine.start` hands
its attempt to `Database.run_together`; the starts that queue up while the
database thread is busy are written in its next transaction (up to 64), each
with its own outcome (one that fails is refused alone, the others written
again one by one), and a start that finds the thread idle goes alone at
once. In interleaved wrk rounds (`bench.request_path`, known addresses,
16 connections) on a machine also running the test suite: SQLite 0.67-0.73x
the bare INSERT floor before, 1.12-1.20x after; PostgreSQL 0.67-0.72x
before, 0.74-1.06x after. The floor does one transaction per request, as
the product did.

### Dispatch, second pass: the message (`api/mail/messages.py`)

py-spy `--gil` on one worker after the first pass: rendering and writing out
the message held 63 % of the event loop's samples, `Message.__setitem__` and
the header parser (re-parsing each header a message is given) 24 %, and
folding the same shared headers again for every message 8 %. Two causes
stood out: the standard library's `HeaderRegistry` builds a new header class
every time a message asks for one (9 % of the event loop on its own), and a
shared header object refolds its whole parse tree for every message. Change:
one registry that makes each class once; shared headers that keep their
folded form per kind of policy; the Date, Message-ID and multipart
Content-Type written without being parsed; the templates never checked for
changes once compiled. The messages are byte for byte what the standard
library builds (`tests/flows/test_emails.py`, under three policies).
Composing and writing out one recovery email, quiet micro-run: 2.35 ms ->
1.43 ms. One worker on PostgreSQL, 3,000 emails, before and after on the
same machine minutes apart: 143 -> 174 emails/s (the day's SMTP floor
script: 1,000-1,500/s). The database threads now hold 46 % of the worker's
GIL samples: building a python-statemachine machine per fire and the per-fire
statements (link check, update, event insert) are what is left to batch.

### Dispatch, third pass: the machines (`engine/machines.py`, `engine/core.py`)

Timing python-statemachine alone, in-process: building a machine of the
recovery flow's version 2 costs 0.63 ms (its `__init__` resolves each of the
class's ~30 callback names against the machine and the model, one by one)
and taking `dispatch` on it 0.5 ms more, 1.12 ms a fire; taking the event
on a machine already built costs 0.29 ms. Change: the engine keeps each flow
version's machines (`engine.machines.Machines`, up to 8 a class), each bound
to a model of its own that a fire reloads with the attempt's row; a machine
is kept only after it took or refused the event and is still running (one
that entered a final state, or whose effect raised, is dropped), and a fire
nested in another's effect takes a machine of its own. The dispatch link
check (`keep_the_link`) reads every attempt's stored digest once per batch
(`Transaction.read_for_all`) instead of once a fire. One worker on
PostgreSQL, 3,000 emails, before and after in alternation on a noisy
machine: 130 and 113 -> 131 and 168 emails/s, 22.1 and 24.5 -> 19.5 and
17.2 s of worker CPU. py-spy `--gil`: the database threads went from 46-49 %
of the worker's samples to 24 % (`Engine.fire_many_sync` 44 % -> 20 %);
what is left is the event loop's: composing the message (~30 %) and the
SMTP exchange (~19 %).

### Dispatch, fourth pass: writing the message (`api/mail/messages.py`, `api/mail/wire.py`)

py-spy `--gil` on one worker after the third pass (3,000 emails, PostgreSQL):
composing the message held 33 % of the samples (the templates 13.5 %, the To
header parsed for every message 7.8 %, the parts' quoted-printable encoding
6.5 %), aiosmtplib's `send_message` 19 % (its copy of the message and the
standard library's generator 11.5 %, the SMTP exchange 7.7 %), the database
threads 33 %. cProfile of one render: 82 `Context.call`s, three for each
translated text, because the i18n extension's `_` calls its `gettext`, which
calls the catalogue's. Changes: the To header is written without being parsed
when it fits on one line (its one address known, which is what the envelope
reads), and the sender's address parsed once per address; the transports
write a message's bytes themselves (`api.mail.wire.message_bytes`, exactly
the generator's bytes under six policies and for random texts,
`tests/flows/test_wire.py`; anything unusual still goes to the generator) and
hand them to `SMTP.sendmail` with the options `send_message` would choose;
the templates' `_` is one call deep (every template renders exactly as with
the extension's own, `tests/flows/test_emails.py`); Babel's data for a
language parsed once, not at each date and time it formats. Composing and
writing one French recovery email, before and after in alternation, best of
7 x 2,000: 0.79-0.82 ms -> 0.47-0.49 ms. One worker on PostgreSQL, 3,000
emails, before and after in alternation on a quiet machine: 227, 219, 245 ->
259, 270, 309 emails/s; worker CPU 3.80, 3.90, 3.55 -> 3.26, 3.13, 2.74 ms an
email. py-spy `--gil` after: aiosmtplib's share 19 % -> 12 % (the bytes
written here 2.8 %), the database threads' 33 % -> 41 % (the per-fire UPDATE
and event INSERT 16 %, python-statemachine 8 %), and the top self-time is
now the quoted-printable encoding of the HTML part (5 %).

### `GET /health` and every request: the access log (`api/logs.py`)

The full run before this change measured `http_health_vs_hello_ratio` at
0.47x (runs 0.43, 0.47, 0.51). Calling both applications in-process (no
server, 5 x 3,000 calls) put the hello at 81 us and `/health` at 176 us;
with the log level at WARNING, `/health` took 121 us, and served by `recovery
serve` it answered 3,982 and 3,670 req/s against 3,051 and 2,637 with its
access log on. So the
one access-log line was a third of the request inside the application. Its
pieces, measured in place: making the record 11 us, the redacting filter
6 us, formatting 13 us, the logging calls around the handler and the write
27 us (a noisy machine). Changes: the record is a copy of a template made
once (every field `Logger.makeRecord` gives, `tests/api/test_ops.py`), its
line redacted where it is made and marked so, so the filter passes it; the
redacting formatter writes a marked record in the service's line format
directly (the same text as the standard `Formatter`); the redaction's word
check is one regular expression. The record still goes through the access
logger's handlers, so configuration and capture are unchanged. In-process,
before and after in alternation: `/health` 176, 181 us -> 157, 155 us, the
hello 83, 84 us -> 81, 81 us. uvicorn's two writes per response were tried
as one (the head held until the body's first write): fewer system calls but
fewer requests a second under wrk (2,607-2,988 against 2,942-3,220 req/s,
twelve runs in alternation, two servers of each), so it was not kept.

The quoted-printable encoding was the worker's top self-time: the standard
library's `set_content` encodes a text's first ten lines to choose between
quoted-printable and base64, then the whole text again. Quoted-printable
encodes line by line, so the first lines' encoding and the rest's make the
whole (`api.mail.messages.encode_text`; equal to the standard library's for
random texts under six policies, `tests/flows/test_wire.py`). On a loaded
machine, best of 5 x 500, four runs: the text part 95-99 us -> 60-64 us, the
HTML part 214-224 us -> 185-192 us in three (the first, 224 -> 305 us, was
noise).

### Code endpoint timing (`flows/password_recovery.py`)

The full run before this change measured `code_enumeration_mannwhitney_p` at
3.7e-05 (median difference 0.24 ms): a wrong code for a known address was
slower. Timing each step in-process (600 tries of each kind): the link rows
read 0.055 ms more (a row found), the judging transaction 0.044 ms more (a
row locked and updated rather than none), the refused `enter_code` fire
0.106 ms more (a guard evaluated rather than a state that takes no code).
Rather than chase each, a refusal is now answered on the next multiple of
`RECOVERY_CODE_REFUSAL_FLOOR_MS` (50 ms) after the try began.

### Dispatch, fifth pass: a batch's writes (`engine/core.py`)

py-spy `--gil` on one worker (3,000 emails, PostgreSQL, a quiet machine, 1,302
samples, start-up imports included): `Engine.fire_many_sync` held 37 % of the
samples, `_commit_transition` 21 % of them, its event INSERT (`INSERT ...
RETURNING seq` with the next number worked out inside it) 14 % and the
version-checked UPDATE 6.5 %: two statements a fire, each through
SQLAlchemy's execution path. Change: a batch fired without savepoints reads
its attempts' last event numbers in one query, numbers its own events, and
holds its transitions and events back (`_Batch`); they go out as one
executemany each (psycopg pipelines the UPDATEs, SQLAlchemy writes the events
as multi-row INSERTs) at the batch's end, or first thing when an effect
reaches the database through `Transaction.conn`, so nothing ever reads the
database without them. A row that moved under the batch (the UPDATEs' row
count falls short) or an event number taken meanwhile (the INSERT fails)
fails the batch, which is fired again with a savepoint per fire, as a
conflict was before (`tests/engine/test_batches.py`). One worker, 3,000
emails, two rounds each: 397, 392 -> 487, 477 emails/s; worker CPU 2.50,
2.44 -> 1.87, 1.94 ms an email. py-spy after: `fire_many_sync` 24 % (the two
executemanys 7.5 %), composing the message 26 % (the templates 11 %, the
quoted-printable encoding 6 % self), the SMTP exchange 14 %.

Tried and not kept: remembering each line's quoted-printable encoding (a
template's lines repeat from email to email). Equal to the standard
library's, but composing and writing one email stayed at 0.59-0.60 ms (best
of 5 x 2,000, 588 -> 599 us): each email still has about nine lines of its
own, and splitting and joining cost what the remembered lines saved.
Composing alone (0.6 ms an email, in-process) bounds one worker below
1,700 emails/s whatever the database costs, while the SMTP floor hands
pre-built messages over at 1,800-2,500 emails/s on this machine. At the full
run's floor of 1,804 emails/s, 0.7x is 1,263 emails/s: 0.79 ms an email for
everything, of which composing takes 0.6 ms, leaving 0.19 ms for the claim,
the throttles, the token, the send and the transition, which take about
1.3 ms today.

### Dispatch, sixth pass: the ceiling, and the machine under load

Measured by hand on a slower day of this machine (the SMTP floor at 830-1,600
emails/s, one worker at 210-300), so the figures below are each other's
context, not the full run's. Per email, by process (psutil, 3,000 emails):
the floor's sender spent 0.64 and 0.83 ms of CPU handing pre-built messages
over, and the sink (in the bench process) 0.83 and 1.03 ms taking them. A
process that only renders each email (the dispatcher's template code) and
sends it through the product's SMTP transport over 4 kept connections spent
0.98-1.16 ms, against 0.45-0.57 ms for the same transport sending pre-built
messages: rendering costs about as much as sending. That process reached
0.77x, 0.54x and 0.48x the floor in three interleaved rounds, and 0.59x,
0.54x and 0.70x with `python -m bench.dispatch render-send`, which now
measures it in every run (`dispatch_render_send_vs_smtp_floor_ratio`). It
has no database, no throttles, no tokens and no state machine: it is what
`dispatch_vs_smtp_floor_ratio` would be if all of those cost nothing.

Time to inbox at lower loads (`recovery serve --no-dispatcher` and one
worker on PostgreSQL, 20-30 s each): 20 requests/s, p50 239 ms and p99
544 ms (the 0.5 s idle poll is most of it); 100/s, p50 102 ms, p99 402 ms;
150/s, p50 165 and 210 ms in two runs but 3.4, 7.5 and 15.7 s in three
others; 200/s, a queue in every run (p50 2.4-13.8 s, up to 2,866 waiting),
although the same worker alone empties a full queue at 210-300 emails/s.
Timers in the worker at 200/s, per chunk of 16 emails: storing the links
28-35 ms (3 ms of it the thread's CPU), the `dispatch` transitions 59-76 ms
(18-20 ms CPU), the sends 70-100 ms. The machine was at 156 % of its 200 %
with 10 % stolen by the host: the API server 38 % of a core at 200
requests/s, the worker 57 %, the sink 20 %, the PostgreSQL backends about
25 %. Sixteen connections instead of four, a GIL switch interval of 0.5 ms
instead of 5 ms and `synchronous_commit=off` each changed nothing: the waits
are for a core, not for a lock, a disk or the mail server.
"""


def notes() -> str:
    """The findings, as Markdown."""
    return FINDINGS

"""The Lua scripts of :mod:`.answers`. Each answer is one script: its conditions
(the job id's lock, a stored result) are checked in the same atomic step as its
writes, a crash leaves all of its writes or none, and a Redis that refuses writes
(OOM, READONLY) refuses the script at its first write, before anything changed."""

from __future__ import annotations


# KEYS: 1 result key, 2 results stream, 3 jobs stream, 4 errors hash, 5 lock, 6 reply stream,
#       7 dead-letter stream
# ARGV: 1 body, 2 TTL s, 3 entry id, 4 group, 5 results maxlen, 6 job id, 7 ok, 8 code,
#       9 token, 10 mode (fenced | dead | keep | none), 11 reply? (1/0), 12 reply maxlen,
#       13 dead maxlen, 14... the dead-letter entry's fields and values (mode dead)
# returns 1 answered, 0 already answered (fenced: acknowledged; dead: nothing written),
#        -1 another worker or entry owns the job (nothing written),
#        2 (fenced) answered already with this very body: this attempt's own answer, written
#          by a try whose replication was not confirmed; the result is written again (its
#          TTL renewed: a write, so a WAIT after it covers it) and nothing else is repeated
# The reply is the first write: a reply stream of the wrong type fails the script
# before anything is written.
def _decision(lock: str, token: str, acknowledge: str = "") -> str:
    """Lua: whether an answer may be written, from ``holder`` (the lock's value) and
    ``answered`` (the result key ``KEYS[1]`` exists), for ``mode`` fenced or dead; the
    result body is ``ARGV[1]``, its TTL ``ARGV[2]``. ``acknowledge`` runs when a fenced
    answer finds the job answered already."""
    return f"""if mode == 'fenced' then
  if holder and holder ~= {token} then return -1 end
  if answered then
    local ours = redis.call('GET', KEYS[1]) == ARGV[1]
    if ours then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
{acknowledge}    if holder then redis.call('DEL', {lock}) end
    if ours then return 2 end
    return 0
  end
elseif mode == 'dead' then
  if holder then return -1 end
  if answered then return 0 end
end
"""


ANSWER = """
local mode = ARGV[10]
local holder = false
if mode ~= 'none' then holder = redis.call('GET', KEYS[5]) end
local answered = mode ~= 'none' and redis.call('EXISTS', KEYS[1]) == 1
""" + _decision("KEYS[5]", "ARGV[9]", """    redis.pcall('XACK', KEYS[3], ARGV[4], ARGV[3])
    redis.call('HDEL', KEYS[4], ARGV[3])
""") + """if ARGV[11] == '1' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[12], '*', 'result', ARGV[1])
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
if mode == 'fenced' or mode == 'dead' or (mode == 'keep' and not holder and not answered) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
if mode == 'dead' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[13], '*', unpack(ARGV, 14))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'job_id', ARGV[6], 'entry_id', ARGV[3], 'ok', ARGV[7], 'code', ARGV[8])
redis.pcall('XACK', KEYS[3], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
if mode == 'fenced' and holder then redis.call('DEL', KEYS[5]) end
return 1
"""

# KEYS: 1 results stream, 2 jobs stream, 3 errors hash, 4 reply stream
# ARGV: 1 stored result, 2 TTL s, 3 entry id, 4 group, 5 results maxlen, 6 job id, 7 ok,
#       8 code, 9 new submission? (1/0), 10 reply? (1/0), 11 reply maxlen
DUPLICATE = """
if ARGV[9] == '1' then
  if ARGV[10] == '1' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[11], '*', 'result', ARGV[1])
    redis.call('EXPIRE', KEYS[4], ARGV[2])
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'job_id', ARGV[6],
    'entry_id', ARGV[3], 'ok', ARGV[7], 'code', ARGV[8], 'duplicate', '1')
end
redis.pcall('XACK', KEYS[2], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
return 1
"""

# On Redis Cluster the keys above live in several slots, which one script may not touch
# (CROSSSLOT). There the answer is two steps (see :mod:`.answers`): this script, in
# the job id's slot, decides and stores as ANSWER does and records the notes still to
# write (reply, note, dead letter) in the notes key, atomically with the result; then
# the notes are written one key at a time and the notes key deleted, then the entry
# acknowledged. A worker that dies in between leaves the notes key: the entry's next
# delivery finds the stored result and writes the recorded notes (at least once).
# KEYS: 1 result key, 2 lock, 3 notes key
# ARGV: 1 body, 2 TTL s, 3 token, 4 mode (fenced | dead | keep), 5 notes JSON
# returns as ANSWER; on 2 the notes key of the earlier try, if any, is kept
ANSWER_IN_SLOT = """
local mode = ARGV[4]
local holder = redis.call('GET', KEYS[2])
local answered = redis.call('EXISTS', KEYS[1]) == 1
""" + _decision("KEYS[2]", "ARGV[3]") + """
if mode == 'fenced' or mode == 'dead' or (not holder and not answered) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2])
if mode == 'fenced' and holder then redis.call('DEL', KEYS[2]) end
return 1
"""

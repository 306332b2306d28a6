// Shared by the fidelity programs: the leads `b24 emulate --seed-leads N` creates, a checker for a
// full list of them, and a report that prints PASS/FAIL per check and sets the exit status.
const STATUSES = ['NEW', 'IN_PROCESS', 'PROCESSED', 'JUNK', 'CONVERTED']

// Lead i of a freshly seeded emulator (emulator/lua/b24/emulator/crm.lua seed_leads), as a portal
// prints it: every value a string.
export function expectedLead (i) {
  return {
    ID: String(i),
    TITLE: `Lead #${i}`,
    NAME: `Name${i}`,
    LAST_NAME: `Last${i}`,
    STATUS_ID: STATUSES[(i - 1) % STATUSES.length],
    OPPORTUNITY: ((i * 137) % 10000 + 0.5).toFixed(2),
    SOURCE_ID: i % 2 === 0 ? 'WEB' : 'CALL',
    HAS_PHONE: i % 3 === 0 ? 'Y' : 'N',
    HAS_EMAIL: i % 5 === 0 ? 'Y' : 'N'
  }
}

export const LEAD_SELECT = ['ID', 'TITLE', 'NAME', 'LAST_NAME', 'STATUS_ID', 'OPPORTUNITY', 'SOURCE_ID',
  'HAS_PHONE', 'HAS_EMAIL', 'PHONE']

// The differences of one row from lead i (fields of expectedLead, and PHONE when selected).
export function leadDiff (row, i, { phone = false } = {}) {
  const want = expectedLead(i)
  const diffs = []
  for (const [k, v] of Object.entries(want)) {
    if (row[k] !== v) diffs.push(`${k}=${JSON.stringify(row[k])} (want ${JSON.stringify(v)})`)
  }
  if (phone) {
    const list = row.PHONE
    if (i % 3 === 0) {
      const value = '+1555' + String(i).padStart(7, '0')
      if (!Array.isArray(list) || list.length !== 1 || list[0].VALUE !== value ||
          list[0].VALUE_TYPE !== 'WORK' || typeof list[0].ID !== 'string') {
        diffs.push(`PHONE=${JSON.stringify(list)} (want one WORK ${value})`)
      }
    } else if (list !== undefined && !(Array.isArray(list) && list.length === 0)) {
      diffs.push(`PHONE=${JSON.stringify(list)} (want none)`)
    }
  }
  return diffs
}

// Checks that rows are leads 1..n, each exactly once, in any order, with the right fields.
// Returns null, or a description of what is wrong.
export function checkAllLeads (rows, n, opts) {
  if (!Array.isArray(rows)) return `not a list: ${typeof rows}`
  const seen = new Map()
  const problems = []
  for (const row of rows) {
    const id = Number.parseInt(row?.ID, 10)
    if (!(id >= 1 && id <= n)) { problems.push(`unexpected ID ${JSON.stringify(row?.ID)}`); continue }
    seen.set(id, (seen.get(id) || 0) + 1)
    const diffs = leadDiff(row, id, opts)
    if (diffs.length) problems.push(`lead ${id}: ${diffs.join(', ')}`)
  }
  let missing = 0; let twice = 0
  for (let i = 1; i <= n; i++) {
    const c = seen.get(i) || 0
    if (c === 0) missing++
    if (c > 1) twice++
  }
  if (missing) problems.unshift(`${missing} IDs missing`)
  if (twice) problems.unshift(`${twice} IDs more than once`)
  if (rows.length !== n) problems.unshift(`${rows.length} rows, ${n} expected`)
  if (!problems.length) return null
  return problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; … ${problems.length - 5} more` : '')
}

// Throws with msg unless cond holds.
export function ensure (cond, msg) {
  if (!cond) throw new Error(msg)
}

export class Report {
  constructor (sdk) { this.sdk = sdk; this.failed = 0; this.passed = 0 }

  // Runs one check: fn returns a detail string (shown after PASS) or throws.
  async check (name, fn) {
    const t0 = Date.now()
    try {
      const detail = await fn()
      this.passed++
      console.log(`PASS ${this.sdk}: ${name}${detail ? ` (${detail})` : ''} [${Date.now() - t0} ms]`)
    } catch (e) {
      this.failed++
      const code = e?.code ? `${e.code}: ` : ''
      console.log(`FAIL ${this.sdk}: ${name}: ${code}${e?.message ?? e}`)
    }
  }

  finish () {
    console.log(`${this.sdk}: ${this.passed} passed, ${this.failed} failed`)
    process.exitCode = this.failed ? 1 : 0
  }
}

// The webhook URL and the number of seeded leads, from the environment fidelity.sh sets.
export function config () {
  const webhook = process.env.B24_WEBHOOK
  if (!webhook) { console.error('set B24_WEBHOOK=https://HOST:PORT/rest/1/CODE'); process.exit(2) }
  return { webhook: webhook.replace(/\/+$/, ''), leads: Number(process.env.B24_LEADS || 10000) }
}

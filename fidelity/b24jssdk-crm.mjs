// @bitrix24/b24jssdk, unmodified, against the emulator behind TLS (scripts/fidelity.sh): round
// trips through crm.item.* (a deal, entityTypeId 2, and an item of a smart process found with
// crm.type.list) and through a deal user field (crm.deal.userfield.*, read back by crm.deal.get
// and by crm.item.get in camel case). The shapes checked are the platform's documented ones
// (b24restdocs api-reference/crm/universal/crm-item-*.md, crm/deals/user-defined-fields/*.md) and
// its source (crm/lib/controller/item.php, crm/lib/Service/Converter.php).
import { B24Hook, ParamsFactory, Text } from '@bitrix24/b24jssdk'
import { config, Report, ensure } from './lib.mjs'

const { webhook } = config()
const deals = Number(process.env.B24_DEALS || 0)
const report = new Report('b24jssdk crm')
const b24 = B24Hook.fromWebhookUrl(webhook, { restrictionParams: ParamsFactory.getEnterprise() })
b24.offClientSideWarning()

// An ISO 8601 date with the portal's offset, as crm.item prints createdTime/updatedTime.
const ISO_DATE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$/
const show = (v) => JSON.stringify(v)

// The portal's answer to a call that failed: HTTP status and body, from an AjaxError or a result.
function failure (e) {
  const body = e?.originalError?.response?.data
  return { status: e?.status ?? e?._status, body, text: body ? show(body) : (e?.message ?? String(e)) }
}

// One call: the answer's data ({ result, time }) and total as the SDK reads it (getTotal);
// throws with the portal's error.
async function call (method, params) {
  let res
  try {
    res = await b24.actions.v2.call.make({ method, params })
  } catch (e) {
    const f = failure(e)
    throw new Error(`${method}: HTTP ${f.status} ${f.text}`)
  }
  ensure(res.isSuccess, `${method}: ${res.getErrorMessages().join('; ')}`)
  return { ...res.getData(), total: res.getTotal() }
}

// One call that must fail: { status, body } of the portal's error answer.
async function callFails (method, params) {
  let res
  try {
    res = await b24.actions.v2.call.make({ method, params })
  } catch (e) {
    return failure(e)
  }
  ensure(!res.isSuccess, `${method} succeeded: ${show(res.getData()?.result)}`)
  const e = [...res.getErrors()][0]
  return failure(e)
}

// result.item of crm.item.add/get/update, checked against what was sent.
function checkItem (method, data, entityTypeId, want) {
  const item = data?.result?.item
  ensure(item && typeof item === 'object', `${method}: result ${show(data?.result)}`)
  ensure(Number.isInteger(item.id) && item.id > 0, `${method}: id ${show(item.id)} (want an integer)`)
  ensure(item.entityTypeId === entityTypeId, `${method}: entityTypeId ${show(item.entityTypeId)}`)
  for (const [k, v] of Object.entries(want)) {
    ensure(item[k] === v, `${method}: ${k} ${show(item[k])} (want ${show(v)})`)
  }
  for (const k of ['createdTime', 'updatedTime']) {
    ensure(ISO_DATE.test(item[k] ?? ''), `${method}: ${k} ${show(item[k])} (want ISO 8601 with offset)`)
  }
  ensure(Number.isInteger(item.createdBy), `${method}: createdBy ${show(item.createdBy)}`)
  return item
}

// add, get, update, list with a filter, delete, then get answers 400 NOT_FOUND: one round trip of
// crm.item.* for entityTypeId. fields/changes are sent; expect/expectChanged are checked on the item.
async function itemRoundTrip (entityTypeId, { fields, expect, changes, expectChanged, legacy }) {
  const steps = []
  const added = checkItem('crm.item.add', await call('crm.item.add', { entityTypeId, fields }),
    entityTypeId, expect)
  const id = added.id
  steps.push(`add id ${id}`)
  try {
    const got = checkItem('crm.item.get', await call('crm.item.get', { entityTypeId, id }), entityTypeId, expect)
    ensure(got.id === id && got.createdTime === added.createdTime, `crm.item.get: ${show(got)}`)
    steps.push('get')
    if (legacy) steps.push(await legacy(id, expect))

    const updated = checkItem('crm.item.update', await call('crm.item.update', { entityTypeId, id, fields: changes }),
      entityTypeId, { ...expect, ...expectChanged })
    ensure(updated.id === id, `crm.item.update: id ${updated.id}`)
    ensure(updated.createdTime === added.createdTime, `crm.item.update: createdTime ${show(updated.createdTime)}`)
    const reread = await call('crm.item.get', { entityTypeId, id })
    ensure(reread.result.item.title === changes.title, `crm.item.get after update: title ${show(reread.result.item.title)}`)
    steps.push('update')

    // crm/lib/controller/item.php listAction: filter keys in camel case, the converter upper-cases them
    const list = await call('crm.item.list', {
      entityTypeId,
      filter: { '=title': changes.title, '@id': [id] },
      select: ['id', 'title'],
      order: { id: 'DESC' }
    })
    const items = list?.result?.items
    ensure(Array.isArray(items) && items.length === 1, `crm.item.list: items ${show(items)}`)
    ensure(items[0].id === id && items[0].title === changes.title, `crm.item.list: ${show(items[0])}`)
    ensure(list.total === 1, `crm.item.list: total ${show(list.total)}`)
    const none = await call('crm.item.list', { entityTypeId, filter: { '=title': changes.title, '!=id': id } })
    ensure(none.result?.items?.length === 0 && none.total === 0,
      `crm.item.list with !=id: ${show(none.result)} total ${show(none.total)}`)
    steps.push('list (filter =title, @id; !=id gives none)')
  } finally {
    const del = await call('crm.item.delete', { entityTypeId, id })
    ensure(Array.isArray(del.result) && del.result.length === 0, `crm.item.delete: result ${show(del.result)} (want [])`)
  }
  steps.push('delete')
  const gone = await callFails('crm.item.get', { entityTypeId, id })
  ensure(gone.status === 400 && gone.body?.error === 'NOT_FOUND',
    `crm.item.get of the deleted item: HTTP ${gone.status} ${gone.text} (want 400 NOT_FOUND)`)
  steps.push('get after delete: 400 NOT_FOUND')
  return steps.join(', ')
}

// Deal i of a freshly seeded emulator (emulator/lua/b24/emulator/crm.lua SEED_FIELDS) as crm.item
// prints it: lower camel case, the amount a number.
function dealDiff (item, i) {
  const want = { id: i, title: `Deal #${i}`, stageId: i % 2 === 0 ? 'NEW' : 'PREPARATION',
    opportunity: (i * 211) % 10000 + 0.25, currencyId: 'USD' }
  return Object.entries(want).filter(([k, v]) => item[k] !== v)
    .map(([k, v]) => `${k}=${show(item[k])} (want ${show(v)})`)
}

// Rows that must be deals 1..n, each once, in any order: null, or what is wrong.
function checkAllDeals (rows, n) {
  if (!Array.isArray(rows)) return `not a list: ${typeof rows}`
  const seen = new Set()
  const problems = []
  for (const row of rows) {
    if (!(Number.isInteger(row?.id) && row.id >= 1 && row.id <= n)) { problems.push(`unexpected id ${show(row?.id)}`); continue }
    if (seen.has(row.id)) problems.push(`id ${row.id} twice`)
    seen.add(row.id)
    const diffs = dealDiff(row, row.id)
    if (diffs.length) problems.push(`deal ${row.id}: ${diffs.join(', ')}`)
  }
  if (rows.length !== n) problems.unshift(`${rows.length} rows, ${n} expected`)
  return problems.length ? problems.slice(0, 5).join('; ') : null
}

// The SDK's own recipe for crm.item.list (its docs: idKey 'id', customKeyForResult 'items'): it
// pages by filter >id and order id, which the portal converts (>id -> >ID) and validates.
const DEAL_LIST = {
  method: 'crm.item.list',
  params: { entityTypeId: 2, filter: { '%title': 'Deal #' }, select: ['id', 'title', 'stageId', 'opportunity', 'currencyId'] },
  idKey: 'id',
  customKeyForResult: 'items'
}

if (deals > 0) {
  await report.check(`callList crm.item.list (entityTypeId 2): all ${deals} seeded deals`, async () => {
    const res = await b24.actions.v2.callList.make(DEAL_LIST)
    ensure(res.isSuccess, res.getErrorMessages().join('; '))
    const problem = checkAllDeals(res.getData(), deals)
    ensure(!problem, problem)
    return `${res.getData().length} items, each id once, fields right`
  })

  await report.check(`fetchList crm.item.list (entityTypeId 2): all ${deals} seeded deals in chunks`, async () => {
    const rows = []
    let chunks = 0
    for await (const chunk of b24.actions.v2.fetchList.make(DEAL_LIST)) {
      chunks++
      rows.push(...chunk)
    }
    const problem = checkAllDeals(rows, deals)
    ensure(!problem, problem)
    return `${rows.length} items in ${chunks} chunks, each id once, fields right`
  })

  // The SDK's date recipe (Text.toB24Format: ISO 8601 in node's zone, UTC here) against dates the
  // portal keeps in its own zone (+03:00): compared as instants (CRestUtil::unConvertDateTime).
  await report.check('crm.item.list filters createdTime with Text.toB24Format dates', async () => {
    const hour = 3600 * 1000
    const since = Text.toB24Format(new Date(Date.now() - hour))
    const until = Text.toB24Format(new Date(Date.now() + hour))
    const base = { entityTypeId: 2, select: ['id', 'createdTime'] }
    const within = await call('crm.item.list', { ...base, filter: { '%title': 'Deal #', '>=createdTime': since, '<createdTime': until } })
    ensure(within.total === deals && within.result.items.length === Math.min(deals, 50), `within the hour: total ${within.total}`)
    const created = within.result.items[0].createdTime
    ensure(ISO_DATE.test(created) && created.endsWith('+03:00'), `createdTime ${show(created)} (want the portal's +03:00)`)
    const later = await call('crm.item.list', { ...base, filter: { '%title': 'Deal #', '>=createdTime': until } })
    ensure(later.total === 0 && later.result.items.length === 0, `after the hour: total ${later.total}`)
    return `>=${since} <${until}: ${within.total}; >=${until}: 0`
  })
}

await report.check('crm.item round trip: a deal (entityTypeId 2), read back by crm.deal.get too', async () => {
  const title = `Fidelity deal ${Date.now()}`
  return itemRoundTrip(2, {
    fields: { title, opportunity: 1234.5, currencyId: 'USD' },
    expect: { title, opportunity: 1234.5, currencyId: 'USD' },
    changes: { title: `${title} (updated)`, opportunity: 99 },
    expectChanged: { title: `${title} (updated)`, opportunity: 99 },
    // an item of entityTypeId 2 is the deal of the legacy methods
    legacy: async (id) => {
      const deal = (await call('crm.deal.get', { id })).result
      ensure(deal?.ID === String(id) && deal.TITLE === title && deal.OPPORTUNITY === '1234.50' &&
        deal.CURRENCY_ID === 'USD', `crm.deal.get: ${show(deal)}`)
      return 'crm.deal.get'
    }
  })
})

await report.check('crm.item round trip: a smart process item (entityTypeId from crm.type.list)', async () => {
  const types = (await call('crm.type.list', {})).result?.types
  ensure(Array.isArray(types) && types.length > 0, `crm.type.list: types ${show(types)}`)
  const type = types.find((t) => t.entityTypeId === 128) ?? types[0]
  ensure(Number.isInteger(type.entityTypeId) && type.entityTypeId >= 128 && typeof type.title === 'string',
    `crm.type.list: ${show(type)}`)
  const title = `Fidelity smart item ${Date.now()}`
  const steps = await itemRoundTrip(type.entityTypeId, {
    fields: { title },
    expect: { title },
    changes: { title: `${title} (updated)` },
    expectChanged: { title: `${title} (updated)` }
  })
  return `type "${type.title}" entityTypeId ${type.entityTypeId}: ${steps}`
})

// A deal user field: crm.deal.userfield.add, a deal written with it through crm.deal.add and
// crm.item.add and read back through both, then crm.deal.userfield.delete. name is FIELD_NAME as
// sent; camel is the name crm.item prints (crm/lib/Service/Converter.php).
async function userFieldRoundTrip (name, camel) {
  const full = `UF_CRM_${name}`
  const steps = []
  const added = await call('crm.deal.userfield.add', {
    fields: { FIELD_NAME: name, USER_TYPE_ID: 'string', LABEL: 'Fidelity note' }
  })
  const fieldId = added.result
  ensure(Number.isInteger(fieldId) && fieldId > 0, `crm.deal.userfield.add: result ${show(fieldId)} (want an integer)`)
  steps.push(`userfield.add ${fieldId}`)
  const deals = []
  let deleted = false
  try {
    const uf = (await call('crm.deal.userfield.get', { id: fieldId })).result
    ensure(uf?.ID === String(fieldId) && uf.FIELD_NAME === full && uf.USER_TYPE_ID === 'string' &&
      uf.ENTITY_ID === 'CRM_DEAL', `crm.deal.userfield.get: ${show(uf)}`)
    const listed = (await call('crm.deal.userfield.list', { filter: { FIELD_NAME: full } })).result
    ensure(Array.isArray(listed) && listed.length === 1 && listed[0].ID === String(fieldId),
      `crm.deal.userfield.list: ${show(listed)}`)
    steps.push(`get/list ${full}`)

    // written by the legacy method, read by both
    const legacyId = (await call('crm.deal.add', { fields: { TITLE: 'Fidelity UF deal', [full]: 'legacy value' } })).result
    ensure(Number.isInteger(Number(legacyId)) && Number(legacyId) > 0, `crm.deal.add: result ${show(legacyId)}`)
    deals.push(Number(legacyId))
    const deal = (await call('crm.deal.get', { id: legacyId })).result
    ensure(deal?.[full] === 'legacy value', `crm.deal.get: ${full} ${show(deal?.[full])}`)
    const item = (await call('crm.item.get', { entityTypeId: 2, id: Number(legacyId) })).result?.item
    ensure(item?.[camel] === 'legacy value', `crm.item.get: ${camel} ${show(item?.[camel])}; keys ${
      Object.keys(item ?? {}).filter((k) => /^uf/i.test(k)).join(',')}`)
    steps.push(`crm.deal.add → crm.deal.get ${full}, crm.item.get ${camel}`)

    // written by crm.item.add in camel case, read by both
    const made = (await call('crm.item.add', { entityTypeId: 2, fields: { title: 'Fidelity UF item', [camel]: 'item value' } }))
      .result?.item
    ensure(Number.isInteger(made?.id), `crm.item.add: ${show(made)}`)
    deals.push(made.id)
    ensure(made[camel] === 'item value', `crm.item.add: ${camel} ${show(made[camel])}`)
    const again = (await call('crm.deal.get', { id: made.id })).result
    ensure(again?.[full] === 'item value', `crm.deal.get of the crm.item.add deal: ${full} ${show(again?.[full])}`)
    const updated = (await call('crm.item.update', { entityTypeId: 2, id: made.id, fields: { [camel]: 'changed' } }))
      .result?.item
    ensure(updated?.[camel] === 'changed', `crm.item.update: ${camel} ${show(updated?.[camel])}`)
    steps.push(`crm.item.add/update ${camel} → crm.deal.get ${full}`)

    // crm.deal.fields lists the user field
    const described = (await call('crm.deal.fields', {})).result?.[full]
    ensure(described?.type === 'string' && described.isMultiple === false && described.isDynamic === true &&
      described.title === full, `crm.deal.fields: ${full} ${show(described)}`)
    steps.push('crm.deal.fields')

    // rest/lib/userfieldproxy.php delete: the field goes, and its values with it
    const del = await call('crm.deal.userfield.delete', { id: fieldId })
    deleted = true
    ensure(del.result === true, `crm.deal.userfield.delete: result ${show(del.result)} (want true)`)
    const after = (await call('crm.deal.get', { id: made.id })).result
    ensure(after?.ID === String(made.id) && !(full in after),
      `crm.deal.get after the field's delete: ${full} ${show(after?.[full])}`)
    const itemAfter = (await call('crm.item.get', { entityTypeId: 2, id: made.id })).result?.item
    ensure(itemAfter?.id === made.id && !(camel in itemAfter),
      `crm.item.get after the field's delete: ${camel} ${show(itemAfter?.[camel])}`)
    steps.push(`userfield.delete (the deals keep no ${full})`)
  } finally {
    if (!deleted) await call('crm.deal.userfield.delete', { id: fieldId })
    for (const id of deals) await call('crm.deal.delete', { id })
  }
  // rest/lib/userfieldproxy.php get: RestException ERROR_NOT_FOUND, status 400 by default
  const left = await callFails('crm.deal.userfield.get', { id: fieldId })
  ensure(left.status === 400 && left.body?.error === 'ERROR_NOT_FOUND' &&
    left.body?.error_description === `The entity with ID '${fieldId}' is not found.`,
  `crm.deal.userfield.get of the deleted field: HTTP ${left.status} ${left.text}`)
  steps.push('get after delete: 400 ERROR_NOT_FOUND')
  return steps.join(', ')
}

await report.check('user field: crm.deal.userfield.add FIDELITY_NOTE, written and read as UF_CRM_FIDELITY_NOTE / ufCrmFidelityNote',
  () => userFieldRoundTrip('FIDELITY_NOTE', 'ufCrmFidelityNote'))

// A code of digits, as the portal's own form makes them (UF_CRM_1721244707107): crm.item prints it
// as ufCrm_1721244707107 (Converter.php isSpecialDecodeWayFromUpperToCamel).
const digits = String(Date.now())
await report.check(`user field with a numeric code: UF_CRM_${digits} is ufCrm_${digits} in crm.item`,
  () => userFieldRoundTrip(digits, `ufCrm_${digits}`))

await report.check('a UF_ key of no defined user field is not stored (crm.deal.add, crm.deal.get)', async () => {
  const id = (await call('crm.deal.add', { fields: { TITLE: 'Fidelity undefined UF', UF_CRM_NO_SUCH_FIELD: 'x' } })).result
  try {
    const deal = (await call('crm.deal.get', { id })).result
    ensure(deal?.TITLE === 'Fidelity undefined UF', `crm.deal.get: ${show(deal)}`)
    ensure(!('UF_CRM_NO_SUCH_FIELD' in deal), `crm.deal.get: UF_CRM_NO_SUCH_FIELD ${show(deal.UF_CRM_NO_SUCH_FIELD)}`)
  } finally {
    await call('crm.deal.delete', { id })
  }
  return `deal ${id} has no UF_CRM_NO_SUCH_FIELD`
})

report.finish()

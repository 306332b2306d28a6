// @2bad/bitrix, unmodified, against the emulator behind TLS (scripts/fidelity.sh): calls, a batch
// with references, and leads.list, which counts first and then fetches every page in batches.
import { Bitrix } from '@2bad/bitrix'
import { config, Report, ensure, leadDiff, checkAllLeads } from './lib.mjs'

const { webhook, leads } = config()
const report = new Report('@2bad/bitrix')
const bitrix = Bitrix(webhook)
const probe = Math.min(leads, 4321)

await report.check(`leads.get ${probe}`, async () => {
  const { result, time } = await bitrix.leads.get(String(probe))
  const diffs = leadDiff(result, probe)
  ensure(diffs.length === 0, diffs.join(', '))
  ensure(typeof time?.start === 'number', 'time.start missing')
  return `TITLE ${result.TITLE}`
})

await report.check('call user.current', async () => {
  const { result } = await bitrix.call('user.current', {})
  ensure(result.ID === '1', `ID ${JSON.stringify(result.ID)}`)
  return `ID ${result.ID}`
})

await report.check('leads.get of a missing lead rejects', async () => {
  let err
  try { await bitrix.leads.get('99999999') } catch (e) { err = e }
  ensure(err, 'a missing lead was found')
  ensure(err.response?.statusCode === 400, `status ${err.response?.statusCode}: ${err.message}`)
  ensure(err.response?.body?.error_description === 'Not found', `body ${JSON.stringify(err.response?.body)}`)
  return `HTTP ${err.response.statusCode} ${JSON.stringify(err.response.body)}`
})

await report.check('batch with $result references (add, get, list, get, delete)', async () => {
  const title = `Fidelity 2bad ${Date.now()}`
  const from = leads - 10
  const { result: r } = await bitrix.batch({
    add: { method: 'crm.lead.add', params: { fields: { TITLE: title, OPPORTUNITY: 7 } } },
    got: { method: 'crm.lead.get', params: { id: '$result[add]' } },
    page: { method: 'crm.lead.list', params: { order: { ID: 'ASC' }, filter: { '>ID': from, '<=ID': leads }, select: ['ID', 'TITLE'], start: -1 } },
    first: { method: 'crm.lead.get', params: { id: '$result[page][0][ID]' } },
    del: { method: 'crm.lead.delete', params: { id: '$result[add]' } }
  })
  const d = r.result
  const id = String(d.add)
  ensure(/^\d+$/.test(id) && Number(id) > leads, `add gave ${JSON.stringify(d.add)}`)
  ensure(d.got?.ID === id && d.got?.TITLE === title && d.got?.OPPORTUNITY === '7.00', `got ${JSON.stringify(d.got)}`)
  ensure(Array.isArray(d.page) && d.page.length === 10 && d.page[0].ID === String(from + 1),
    `page ${JSON.stringify(d.page?.slice?.(0, 2))}`)
  ensure(d.first?.ID === String(from + 1) && leadDiff(d.first, from + 1).length === 0, `first ${JSON.stringify(d.first)}`)
  ensure(d.del === true, `delete gave ${JSON.stringify(d.del)}`)
  ensure(r.result_total?.page === 0 && r.result_next?.page === undefined,
    `page total/next ${JSON.stringify([r.result_total, r.result_next])}`)
  return `new lead ${id} read back and deleted; $result[page][0][ID] = ${d.first.ID}`
})

// leads.list sends its batches as GET query strings: 50 commands with a long select exceed the 8 KB
// request line of nginx (HTTP 414, as protocol.md §1 warns), so this lists with the default select.
await report.check(`leads.list: all ${leads} leads`, async () => {
  const payload = await bitrix.leads.list()
  ensure(!payload.error, `error ${payload.error}`)
  ensure(payload.total === leads, `total ${payload.total}`)
  const problem = checkAllLeads(payload.result, leads)
  ensure(!problem, problem)
  return `${payload.result.length} rows, total ${payload.total}, each ID once, fields right`
})

// From the middle: 5000 of the default 10000 leads (a multiple of 50, as legacy lists round start
// down to a page), so a lowered FIDELITY_LEADS still leaves leads to list.
const from = Math.floor(leads / 100) * 50
await report.check(`list crm.lead.list from start=${from}: the last ${leads - from} leads`, async () => {
  const payload = await bitrix.list('crm.lead.list', { select: ['ID'], order: { ID: 'ASC' }, start: from })
  ensure(!payload.error, `error ${payload.error}`)
  const ids = payload.result.map((r) => Number(r.ID))
  ensure(ids.length === leads - from && new Set(ids).size === ids.length &&
    Math.min(...ids) === from + 1 && Math.max(...ids) === leads, `${ids.length} rows, ${ids[0]}..${ids[ids.length - 1]}`)
  return `${ids.length} rows, ${ids[0]}..${ids[ids.length - 1]}`
})

report.finish()

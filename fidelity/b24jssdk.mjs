// @bitrix24/b24jssdk, unmodified, against the emulator behind TLS (scripts/fidelity.sh):
// a call, a batch with references, a full list of the seeded leads with callList and fetchList.
import { B24Hook, ParamsFactory } from '@bitrix24/b24jssdk'
import { config, Report, ensure, leadDiff, checkAllLeads, LEAD_SELECT } from './lib.mjs'

const { webhook, leads } = config()
const report = new Report('b24jssdk')

// The emulator runs with --enterprise (bucket 250/5): the SDK is told the same plan.
function client () {
  const b24 = B24Hook.fromWebhookUrl(webhook, { restrictionParams: ParamsFactory.getEnterprise() })
  b24.offClientSideWarning()
  return b24
}

function errorsOf (result) {
  return result.getErrorMessages().join('; ')
}

const b24 = client()
const probe = Math.min(leads, 1234)

await report.check(`call crm.lead.get id=${probe}`, async () => {
  const res = await b24.actions.v2.call.make({ method: 'crm.lead.get', params: { id: probe } })
  ensure(res.isSuccess, errorsOf(res))
  const diffs = leadDiff(res.getData().result, probe)
  ensure(diffs.length === 0, diffs.join(', '))
  ensure(typeof res.getData().time?.operating === 'number', 'time.operating missing')
  return `TITLE ${res.getData().result.TITLE}`
})

await report.check('call user.current', async () => {
  const res = await b24.actions.v2.call.make({ method: 'user.current' })
  ensure(res.isSuccess, errorsOf(res))
  const user = res.getData().result
  ensure(user.ID === '1', `ID ${JSON.stringify(user.ID)}`)
  return `ID ${user.ID}`
})

// A legacy CRM "not found" is HTTP 400 {"error":"","error_description":"Not found"} (protocol.md §2):
// the SDK throws an AjaxError with the status and keeps the portal's body.
await report.check('call crm.lead.get of a missing lead gives the portal error', async () => {
  let err
  try {
    const res = await b24.actions.v2.call.make({ method: 'crm.lead.get', params: { id: 99999999 } })
    ensure(!res.isSuccess, 'a missing lead was found')
    err = { message: errorsOf(res) }
  } catch (e) { err = e }
  const body = err.originalError?.response?.data
  ensure(err.status === 400, `status ${err.status}: ${err.code} ${err.message}`)
  ensure(body?.error === '' && body?.error_description === 'Not found', `body ${JSON.stringify(body)}`)
  return `status 400, ${err.code}, body ${JSON.stringify(body)}`
})

await report.check('batch with $result references (add, get, list, get, delete)', async () => {
  const title = `Fidelity b24jssdk ${Date.now()}`
  const from = leads - 10
  const res = await b24.actions.v2.batch.make({
    calls: {
      add: { method: 'crm.lead.add', params: { fields: { TITLE: title, OPPORTUNITY: 12.5 } } },
      got: { method: 'crm.lead.get', params: { id: '$result[add]' } },
      page: { method: 'crm.lead.list', params: { order: { ID: 'ASC' }, filter: { '>ID': from, '<=ID': leads }, select: ['ID', 'TITLE'], start: -1 } },
      first: { method: 'crm.lead.get', params: { id: '$result[page][0][ID]' } },
      del: { method: 'crm.lead.delete', params: { id: '$result[add]' } }
    },
    options: { isHaltOnError: true }
  })
  ensure(res.isSuccess, errorsOf(res))
  const d = res.getData()
  const id = String(d.add)
  ensure(/^\d+$/.test(id) && Number(id) > leads, `add gave ${JSON.stringify(d.add)}`)
  ensure(d.got?.ID === id && d.got?.TITLE === title && d.got?.OPPORTUNITY === '12.50',
    `got ${JSON.stringify(d.got)}`)
  ensure(Array.isArray(d.page) && d.page.length === 10 && d.page[0].ID === String(from + 1),
    `page ${JSON.stringify(d.page?.slice?.(0, 2))}`)
  ensure(d.first?.ID === String(from + 1) && leadDiff(d.first, from + 1).length === 0,
    `first ${JSON.stringify(d.first)}`)
  ensure(d.del === true, `delete gave ${JSON.stringify(d.del)}`)
  return `new lead ${id} read back and deleted; $result[page][0][ID] = ${d.first.ID}`
})

await report.check(`callList crm.lead.list: all ${leads} leads`, async () => {
  const res = await client().actions.v2.callList.make({ method: 'crm.lead.list', params: { select: LEAD_SELECT } })
  ensure(res.isSuccess, errorsOf(res))
  const problem = checkAllLeads(res.getData(), leads, { phone: true })
  ensure(!problem, problem)
  return `${res.getData().length} rows, each ID once, fields right`
})

await report.check(`fetchList crm.lead.list: all ${leads} leads in chunks`, async () => {
  const rows = []
  let chunks = 0
  for await (const chunk of client().actions.v2.fetchList.make({ method: 'crm.lead.list', params: { select: LEAD_SELECT } })) {
    chunks++
    rows.push(...chunk)
  }
  const problem = checkAllLeads(rows, leads, { phone: true })
  ensure(!problem, problem)
  return `${rows.length} rows in ${chunks} chunks, each ID once, fields right`
})

await report.check(`callListMethod (the 1.x helper) crm.lead.list: all ${leads} leads`, async () => {
  const res = await client().callListMethod('crm.lead.list', { select: LEAD_SELECT })
  ensure(res.isSuccess, errorsOf(res))
  const problem = checkAllLeads(res.getData(), leads, { phone: true })
  ensure(!problem, problem)
  return `${res.getData().length} rows`
})

report.finish()

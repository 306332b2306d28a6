// One peer's full export of the seeded leads (bench/export.sh): prints one JSON line
// {"peer","rows","unique","seconds"}. The webhook comes from B24_WEBHOOK (https, through nginx).
//   node bench/export/peer.mjs 2bad|b24jssdk
import { Bitrix } from '@2bad/bitrix'
import { B24Hook } from '@bitrix24/b24jssdk'

const SELECT = ['ID', 'TITLE', 'NAME', 'LAST_NAME', 'STATUS_ID', 'OPPORTUNITY']
const webhook = (process.env.B24_WEBHOOK || '').replace(/\/+$/, '')
const peer = process.argv[2]
if (!webhook || !['2bad', 'b24jssdk'].includes(peer)) {
  console.error('usage: B24_WEBHOOK=https://HOST/rest/1/CODE node peer.mjs 2bad|b24jssdk')
  process.exit(2)
}

async function exportAll () {
  if (peer === '2bad') {
    // leads.list: the documented way to get every lead (a counted first page, then batches)
    const payload = await Bitrix(webhook).leads.list({ select: SELECT })
    return payload.result
  }
  // callList: the SDK's "get all records" action (its default, fastest documented path)
  const b24 = B24Hook.fromWebhookUrl(webhook)
  b24.offClientSideWarning()
  const res = await b24.actions.v2.callList.make({ method: 'crm.lead.list', params: { select: SELECT } })
  if (!res.isSuccess) throw new Error(res.getErrorMessages().join('; '))
  return res.getData()
}

const t0 = process.hrtime.bigint()
const rows = await exportAll()
const seconds = Number(process.hrtime.bigint() - t0) / 1e9
const unique = new Set(rows.map((r) => r.ID)).size
console.log(JSON.stringify({ peer, rows: rows.length, unique, seconds }))

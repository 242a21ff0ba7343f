#!/usr/bin/env node
// Drives a node's operator API with kubo's own RPC client (`kubo-rpc-client`, pinned in
// package-lock.json), as a script written for kubo would, and prints what it got as JSON.
//
//   node kubo-api.mjs API_URL FILE DIR CAR_OUT TAR_OUT
//
// FILE is added as a buffer, DIR (a tree of files) with addAll, then: cat with offset and
// length, pin add/ls/rm, block stat, dag export (written to CAR_OUT), get of DIR's root
// (the tar written to TAR_OUT), id.

import fs from 'node:fs'
import path from 'node:path'

import { create } from 'kubo-rpc-client'

const [url, file, dir, carOut, tarOut] = process.argv.slice(2)
if (tarOut == null) {
  console.error('usage: node kubo-api.mjs API_URL FILE DIR CAR_OUT TAR_OUT')
  process.exit(2)
}
const api = create({ url })

async function bytesOf (iterable) {
  const parts = []
  for await (const p of iterable) parts.push(p)
  return Buffer.concat(parts)
}

function * walk (root, rel) {
  const abs = path.join(root, rel)
  yield { path: rel }
  for (const ent of fs.readdirSync(abs, { withFileTypes: true }).sort((a, b) => a.name < b.name ? -1 : 1)) {
    const r = path.posix.join(rel, ent.name)
    if (ent.isDirectory()) yield * walk(root, r)
    else yield { path: r, content: fs.readFileSync(path.join(root, r)) }
  }
}

const out = {}
const id = await api.id()
out.id = id.id.toString()
out.addresses = id.addresses.map(a => a.toString())

const data = fs.readFileSync(file)
const added = await api.add(data)
out.file = { cid: added.cid.toString(), size: added.size }

const entries = []
for await (const e of api.addAll(walk(path.dirname(dir), path.basename(dir)))) {
  entries.push({ path: e.path, cid: e.cid.toString(), size: e.size })
}
out.dir = entries

out.cat = (await bytesOf(api.cat(added.cid, { offset: 1000, length: 300000 }))).toString('hex')

const pinned = []
for await (const p of api.pin.addAll([added.cid])) pinned.push(p.toString())
out.pinAdd = pinned
const ls = []
for await (const p of api.pin.ls()) ls.push({ cid: p.cid.toString(), type: p.type })
out.pinLs = ls
const removed = []
for await (const p of api.pin.rmAll([{ path: added.cid }])) removed.push(p.toString())
out.pinRm = removed
const after = []
for await (const p of api.pin.ls()) after.push(p.cid.toString())
out.pinLsAfter = after

const stat = await api.block.stat(added.cid)
out.blockStat = { cid: stat.cid.toString(), size: stat.size }

fs.writeFileSync(carOut, await bytesOf(api.dag.export(added.cid)))

const dirRoot = entries.find(e => e.path === path.basename(dir))
fs.writeFileSync(tarOut, await bytesOf(api.get(dirRoot.cid)))

try {
  await bytesOf(api.get(added.cid, { compress: true }))
  out.getCompressed = 'accepted'
} catch (e) {
  out.getCompressed = e.message
}

try {
  await api.block.stat('not-a-cid')
  out.badCid = 'accepted'
} catch (e) {
  out.badCid = e.message
}
console.log(JSON.stringify(out))

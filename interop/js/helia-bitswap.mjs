// A Helia node (Helia 7, @helia/bitswap, js-libp2p 3 on TCP + noise + yamux) on loopback,
// driven over stdin/stdout for the Bitswap interop tests and measurements.
//
// Prints one JSON line at start: {"peer": "<peer id>", "addrs": ["<multiaddr>/p2p/<id>"]}.
// Then reads one JSON command a line and answers one JSON line each, in order:
//   {"op":"add-file","path":P}            -> {"cid"}             (UnixFS defaults of @helia/unixfs)
//   {"op":"add-file","path":P,"chunkSize":N} -> {"cid"}          (the same, in fixed chunks of N bytes)
//   {"op":"add-dir","path":P}             -> {"cid"}             (the directory is the root)
//   {"op":"dial","addr":A}                -> {}
//   {"op":"cat","cid":C}                  -> {"len","sha256","ms"}  (fetched over Bitswap)
//   {"op":"tree","cid":C}                 -> {"files":[{"path","len","sha256"}]}
//   {"op":"want","cid":C}                 -> {"handle"}          (a want left running)
//   {"op":"abort","handle":H}             -> {"aborted":true}    (the want cancelled)
//   {"op":"raw","peer":P,"cid":C,"size":N,"type":"block"|"have"}
//       -> {"sent"}  writes on a new /ipfs/bitswap/1.2.0 stream one message of exactly N bytes
//          (want of C, padded with an unknown field), encoded by @helia/bitswap's codec
//   {"op":"raw-bytes","peer":P,"hex":H}   -> {"sent"}  writes H behind a length prefix
//   {"op":"provide","cid":C}              -> {}                  (HELIA_DHT=1: on the DHT)
//   {"op":"find-providers","cid":C}       -> {"providers":[id]}  (HELIA_DHT=1)
//   {"op":"quit"}                         -> exits
// With HELIA_DHT=1 the node also runs the public IPFS DHT's protocol (@libp2p/kad-dht,
// /ipfs/kad/1.0.0) as a server, keeping loopback addresses (it runs on loopback only).
// Errors answer {"error": "..."}.
import './polyfill.mjs'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs, globSource } from '@helia/unixfs'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import * as lp from 'it-length-prefixed'
import { CID } from 'multiformats/cid'
import { BitswapMessage, WantType } from './node_modules/@helia/bitswap/dist/src/pb/message.js'

const helia = withBitswap(withLibp2pLight(createHeliaLight({ start: false }), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: process.env.HELIA_DHT === '1'
    ? {
        identify: identify(),
        ping: ping(),
        dht: kadDHT({ protocol: '/ipfs/kad/1.0.0', clientMode: false, peerInfoMapper: passthroughMapper })
      }
    : { identify: identify() },
  peerDiscovery: []
}))
await helia.start()
const fs = unixfs(helia)
const libp2p = helia.libp2p

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
out({
  peer: libp2p.peerId.toString(),
  addrs: libp2p.getMultiaddrs().map(a => a.toString())
})

const wants = new Map()
let nextHandle = 0

async function sha (source) {
  const h = createHash('sha256')
  let len = 0
  for await (const chunk of source) {
    h.update(chunk)
    len += chunk.byteLength
  }
  return { len, sha256: h.digest('hex') }
}

async function tree (cid, prefix, files) {
  for await (const entry of fs.ls(cid)) {
    const path = prefix + '/' + entry.name
    const stat = await fs.stat(entry.cid)
    if (stat.type === 'directory') {
      await tree(entry.cid, path, files)
    } else {
      files.push({ path, ...(await sha(fs.cat(entry.cid))) })
    }
  }
}

// Whether the peer took the whole message (it may reset a stream it refuses).
async function writeRaw (peer, bytes) {
  const stream = await libp2p.dialProtocol(peerIdFromString(peer), '/ipfs/bitswap/1.2.0')
  try {
    if (!stream.send(lp.encode.single(bytes))) {
      await stream.onDrain()
    }
    await stream.close()
    return true
  } catch {
    return false
  }
}

function padded (cid, type, size) {
  const base = BitswapMessage.encode({
    wantlist: {
      full: false,
      entries: [{
        cid: CID.parse(cid).bytes,
        priority: 1,
        wantType: type === 'have' ? WantType.WantHave : WantType.WantBlock,
        sendDontHave: true
      }]
    },
    blocks: [],
    blockPresences: [],
    pendingBytes: 0
  })
  // An unknown field (15, length-delimited) fills the rest: key, varint length, bytes.
  const varint = (n) => {
    const b = []
    while (n >= 0x80) { b.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) }
    b.push(n)
    return b
  }
  for (let fill = size - base.length - 2; fill >= 0; fill--) {
    const head = [0x7a, ...varint(fill)]
    if (base.length + head.length + fill === size) {
      const msg = new Uint8Array(size)
      msg.set(base, 0)
      msg.set(head, base.length)
      return msg
    }
  }
  throw new Error(`cannot pad to ${size}`)
}

async function run (cmd) {
  switch (cmd.op) {
    case 'add-file': {
      // Helia's defaults, or fixed chunks of `chunkSize` bytes.
      const options = cmd.chunkSize != null ? { chunker: fixedSize({ chunkSize: cmd.chunkSize }) } : {}
      const cid = await fs.addBytes(readFileSync(cmd.path), options)
      return { cid: cid.toString() }
    }
    case 'add-dir': {
      let root
      for await (const entry of fs.addAll(globSource(cmd.path, '**/*'), { wrapWithDirectory: true })) {
        root = entry.cid
      }
      return { cid: root.toString() }
    }
    case 'dial':
      await libp2p.dial(multiaddr(cmd.addr))
      return {}
    case 'cat': {
      const t = performance.now()
      const r = await sha(fs.cat(CID.parse(cmd.cid)))
      return { ...r, ms: performance.now() - t }
    }
    case 'tree': {
      const files = []
      await tree(CID.parse(cmd.cid), '', files)
      files.sort((a, b) => a.path < b.path ? -1 : 1)
      return { files }
    }
    case 'want': {
      const handle = nextHandle++
      const controller = new AbortController()
      const done = (async () => {
        const r = helia.blockstore.get(CID.parse(cmd.cid), { signal: controller.signal })
        if (r != null && typeof r[Symbol.asyncIterator] === 'function') {
          for await (const _ of r) {} // eslint-disable-line no-unused-vars
        } else {
          await r
        }
      })().catch(() => {})
      wants.set(handle, { controller, done })
      return { handle }
    }
    case 'abort': {
      const w = wants.get(cmd.handle)
      w.controller.abort()
      await w.done
      wants.delete(cmd.handle)
      return { aborted: true }
    }
    case 'raw':
      return { sent: await writeRaw(cmd.peer, padded(cmd.cid, cmd.type, cmd.size)) }
    case 'raw-bytes':
      return { sent: await writeRaw(cmd.peer, Uint8Array.from(Buffer.from(cmd.hex, 'hex'))) }
    case 'provide':
      await libp2p.contentRouting.provide(CID.parse(cmd.cid))
      return {}
    case 'find-providers': {
      const providers = []
      const signal = AbortSignal.timeout(20000)
      try {
        for await (const p of libp2p.contentRouting.findProviders(CID.parse(cmd.cid), { signal })) {
          providers.push(p.id.toString())
          if (cmd.first) break
        }
      } catch (err) {
        if (providers.length === 0) throw err
      }
      return { providers }
    }
    case 'quit':
      await helia.stop()
      process.exit(0)
    default:
      throw new Error(`unknown op ${cmd.op}`)
  }
}

const rl = createInterface({ input: process.stdin })
// Commands run one at a time, in order.
let chain = Promise.resolve()
rl.on('line', (line) => {
  chain = chain.then(async () => {
    try {
      out(await run(JSON.parse(line)))
    } catch (err) {
      out({ error: String(err?.stack ?? err) })
    }
  })
})
rl.on('close', () => { chain.then(() => helia.stop()).then(() => process.exit(0)) })

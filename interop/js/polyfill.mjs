// Node 20 lacks a few ES2024 built-ins that current js-libp2p and Helia packages call.
// Import this module first in every script that loads them.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

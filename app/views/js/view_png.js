const [filename, caption] = button.tags
const plots = [...Bokeh.index.query((view) => view.renderer_views instanceof Map && typeof view.export === "function")]
const drawn = (view) => view.bbox.width > 0 && view.bbox.height > 0 && view.el.getClientRects().length > 0
const heat = plots.find((view) => drawn(view) && view.model.renderers.some(
  (r) => r.glyph != null && r.glyph.type === "ImageRGBA"))
const tiles = plots.find((view) => drawn(view) && view.model.name === "tilegram")
const layers = [heat, tiles].filter((view) => view != null).map((view) => view.export("png", true).canvas)
if (layers.length === 0) {
  console.warn("Download view (PNG): no plot is on screen")
  return
}
const ratio = layers[0].width / Math.max(1, (heat ?? tiles).bbox.width)
const pad = Math.round(12 * ratio)
const line = Math.round(16 * ratio)
const out = document.createElement("canvas")
const ctx = out.getContext("2d")
ctx.font = `${line}px sans-serif`
const text_width = Math.ceil(ctx.measureText(caption).width)
out.width = Math.max(text_width + 2 * pad, layers.reduce((w, c) => w + c.width, 0) + pad * (layers.length + 1))
out.height = Math.max(...layers.map((c) => c.height)) + 3 * pad + line
ctx.fillStyle = "#ffffff"
ctx.fillRect(0, 0, out.width, out.height)
ctx.fillStyle = "#222222"
ctx.font = `${line}px sans-serif`
ctx.textBaseline = "top"
ctx.fillText(caption, pad, pad)
let x = pad
for (const layer of layers) {
  ctx.drawImage(layer, x, 2 * pad + line)
  x += layer.width + pad
}
out.toBlob((blob) => {
  if (blob == null) {
    console.warn("Download view (PNG): the browser could not encode the picture")
    return
  }
  const link = document.createElement("a")
  link.href = URL.createObjectURL(blob)
  link.download = filename
  document.body.appendChild(link)
  link.click()
  link.remove()
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
}, "image/png")

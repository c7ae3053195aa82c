if (window.__csh_history__) {
  return
}
window.__csh_history__ = true
window.addEventListener("popstate", () => {
  for (const doc of Bokeh.documents) {
    const location = doc.get_model_by_name("location")
    if (location == null || location.search === window.location.search) {
      continue
    }
    const push = window.history.pushState
    window.history.pushState = () => {}
    try {
      location.search = window.location.search
    } finally {
      window.history.pushState = push
    }
  }
})

// Follow a flask-afterward job, given the JSON body of its 202 Accepted response.
// Listens to Server-Sent Events on events_url; polls status_url instead when the
// browser has no EventSource or the stream fails (or ends at its 60 s bound).
// Calls onUpdate(status) with each job status; resolves with the last one.
function followJob(job, onUpdate) {
  const finished = ["succeeded", "failed", "cancelled"];
  return new Promise((resolve, reject) => {
    const seen = (status) => {
      onUpdate(status);
      if (finished.includes(status.state)) resolve(status);
      return finished.includes(status.state);
    };
    const poll = () =>
      fetch(job.status_url)
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
        .then((status) => seen(status) || setTimeout(poll, 1000), reject);
    if (!window.EventSource) return poll();
    const events = new EventSource(job.events_url);
    events.addEventListener("update", (e) => seen(JSON.parse(e.data)) && events.close());
    events.onerror = () => { events.close(); poll(); };
  });
}

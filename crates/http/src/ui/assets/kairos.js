// Kairos web UI: our own small script, no libraries.
//
// - Actions (run, enable/disable, delete, cancel, bulk) call the JSON API, so their behaviour and their error
//   messages are the API's; a message goes to the #flash region (role=status, or role=alert for errors).
// - Elements with data-live="/ui/live/..." are replaced by the fragments the server streams (server-sent events).
// - <pre data-follow="..."> appends an execution's output as it is written.
// - The job editor (#job-form): form <-> JSON views, live schedule preview, save through the API with each
//   {"error": "field: problem"} shown next to the field it names.
'use strict';

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const jobPath = (name) => '/v1/jobs/' + encodeURIComponent(name);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Call the API; resolves to the parsed JSON, rejects with the API's own error message. */
  async function api(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  function flash(message, kind = 'ok') {
    const box = $('#flash');
    if (!box) return;
    box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    box.className = 'flash ' + kind;
    box.textContent = message;
    clearTimeout(flash.timer);
    if (kind !== 'error') flash.timer = setTimeout(() => { box.textContent = ''; box.className = ''; }, 8000);
  }

  /** Show a message on the next page (after a reload or a redirect). */
  function remember(message, kind = 'ok') {
    sessionStorage.setItem('kairos.flash', JSON.stringify({ message, kind }));
  }

  function showRemembered() {
    const saved = sessionStorage.getItem('kairos.flash');
    if (!saved) return;
    sessionStorage.removeItem('kairos.flash');
    try {
      const { message, kind } = JSON.parse(saved);
      flash(message, kind);
    } catch (_) { /* ignore */ }
  }

  // ---- Actions on one job or execution -------------------------------------------------------------------

  const actions = {
    async run(button) {
      await api('POST', jobPath(button.dataset.job) + '/run');
      flash(`Started a run of ${button.dataset.job}.`);
    },
    async toggle(button) {
      const job = await api('POST', jobPath(button.dataset.job) + '/toggle');
      remember(`${job.name} is now ${job.disabled ? 'disabled' : 'enabled'}.`);
      location.reload();
    },
    async delete(button) {
      const name = button.dataset.job;
      if (!window.confirm(`Delete job ${name} and all its executions? This cannot be undone.`)) return;
      await api('DELETE', jobPath(name));
      remember(`Deleted job ${name}.`);
      location.href = button.dataset.redirect || location.href;
    },
    async cancel(button) {
      const { job, execution } = button.dataset;
      await api('POST', `${jobPath(job)}/executions/${encodeURIComponent(execution)}/cancel`);
      flash(`Cancelling execution ${execution} of ${job}…`);
    },
  };

  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button || !actions[button.dataset.action]) return;
    button.disabled = true;
    try {
      await actions[button.dataset.action](button);
    } catch (err) {
      flash(err.message, 'error');
    } finally {
      button.disabled = false;
    }
  });

  // ---- Bulk actions on the jobs list ---------------------------------------------------------------------

  const selectedJobs = () => $$('input[name=select]:checked').map((input) => input.value);

  function updateBulk() {
    const count = selectedJobs().length;
    const label = $('#bulk-count');
    if (label) label.textContent = `${count} selected`;
    for (const button of $$('[data-bulk]')) button.disabled = count === 0;
  }

  const bulkVerbs = { run: 'Run', enable: 'Enable', disable: 'Disable', delete: 'Delete' };

  async function bulkOne(kind, name) {
    if (kind === 'run') return api('POST', jobPath(name) + '/run');
    if (kind === 'delete') return api('DELETE', jobPath(name));
    const row = $$('tr[data-job]').find((r) => r.dataset.job === name);
    const disabled = row && row.dataset.disabled === 'true';
    if (disabled === (kind === 'disable')) return null; // already as asked
    return api('POST', jobPath(name) + '/toggle');
  }

  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-bulk]');
    if (!button) return;
    const kind = button.dataset.bulk;
    const names = selectedJobs();
    if (names.length === 0) return;
    const shown = names.slice(0, 10).join(', ') + (names.length > 10 ? ` and ${names.length - 10} more` : '');
    const extra = kind === 'delete' ? ' Their executions are deleted too; this cannot be undone.' : '';
    if (!window.confirm(`${bulkVerbs[kind]} ${names.length} job${names.length === 1 ? '' : 's'}: ${shown}?${extra}`)) return;
    const failures = [];
    for (const name of names) {
      try {
        await bulkOne(kind, name);
      } catch (err) {
        failures.push(`${name}: ${err.message}`);
      }
    }
    const done = names.length - failures.length;
    const message = `${bulkVerbs[kind]}: ${done} of ${names.length} done.` +
      (failures.length ? ` Refused: ${failures.join('; ')}` : '');
    remember(message, failures.length ? 'error' : 'ok');
    location.reload();
  });

  document.addEventListener('change', (event) => {
    const target = event.target;
    if (target.id === 'select-all') {
      for (const box of $$('input[name=select]')) box.checked = target.checked;
    }
    if (target.matches('input[name=select], #select-all')) updateBulk();
    if (target.matches('select[data-autosubmit]')) target.form.requestSubmit();
  });

  // ---- Live fragments ------------------------------------------------------------------------------------

  /** A selector that finds the "same" element again after a swap, to keep keyboard focus in place. */
  function focusKey(element) {
    if (element.id) return '#' + CSS.escape(element.id);
    const attrs = ['data-action', 'data-job', 'data-execution'].filter((a) => element.hasAttribute(a));
    if (attrs.length === 0) return null;
    return attrs.map((a) => `[${a}="${CSS.escape(element.getAttribute(a))}"]`).join('');
  }

  function startLive(element) {
    const source = new EventSource(element.dataset.live);
    let pending = null;
    const swap = (html) => {
      const active = document.activeElement;
      if (active && element.contains(active) && active.matches('select, input, textarea')) {
        pending = html; // do not pull a control away from someone using it
        return;
      }
      const key = active && element.contains(active) ? focusKey(active) : null;
      element.innerHTML = html;
      if (key) {
        const again = $(key, element);
        if (again) again.focus();
      }
    };
    source.onmessage = (event) => swap(event.data);
    element.addEventListener('focusout', () => {
      if (pending !== null) {
        const html = pending;
        pending = null;
        setTimeout(() => swap(html), 0);
      }
    });
    source.addEventListener('gone', () => {
      source.close();
      flash('This no longer exists (it was deleted).', 'error');
    });
  }

  function followOutput(pre) {
    const source = new EventSource(pre.dataset.follow);
    const state = $('#follow-state');
    source.addEventListener('output', (event) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.append(JSON.parse(event.data));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener('reset', () => { pre.textContent = ''; });
    source.addEventListener('meta', (event) => {
      const meta = $('#exec-meta');
      if (meta) meta.innerHTML = event.data;
    });
    source.addEventListener('done', (event) => {
      source.close();
      pre.removeAttribute('data-follow');
      if (state) {
        state.textContent = 'finished: ' + event.data;
        state.className = 'badge s-' + event.data;
      }
    });
    source.addEventListener('gone', () => {
      source.close();
      flash('This execution no longer exists.', 'error');
    });
  }

  // ---- The job editor ------------------------------------------------------------------------------------

  class FieldError extends Error {
    constructor(field, problem) {
      super(`${field}: ${problem}`);
      this.field = field;
    }
  }

  function editor(form) {
    const input = (id) => $('#f-' + id);
    const value = (id) => input(id).value.trim();
    const checked = (id) => input(id).checked;
    const json = $('#f-json');
    const tabs = { form: $('#tab-form'), json: $('#tab-json') };
    const panes = { form: $('#pane-form'), json: $('#pane-json') };
    let view = 'form';

    const section = () => $(`fieldset[data-executor="${CSS.escape(value('executor'))}"]`, form);

    function showExecutor() {
      for (const fieldset of $$('fieldset[data-executor]', form)) {
        fieldset.hidden = fieldset.dataset.executor !== value('executor');
      }
    }

    function pairs(id) {
      const out = {};
      for (const raw of input(id).value.split('\n')) {
        const line = raw.trim();
        if (!line) continue;
        const at = line.indexOf('=');
        if (at <= 0) throw new FieldError(id, `'${line}' is not key=value`);
        out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      }
      return out;
    }

    const toPairs = (map) => Object.entries(map || {}).map(([k, v]) => `${k}=${v}`).join('\n');

    function wholeNumber(id) {
      const text = value(id);
      if (!/^\d+$/.test(text)) throw new FieldError(id, `'${text}' is not a whole number`);
      return Number(text);
    }

    /** The job the form describes, as the API takes it. */
    function formToJob() {
      const job = {
        name: value('name'),
        displayname: value('displayname'),
        owner: value('owner'),
        owner_email: value('owner_email'),
        disabled: checked('disabled'),
        schedule: value('schedule'),
        timezone: value('timezone'),
        catch_up: value('catch_up'),
        catch_up_window: value('catch_up_window'),
        executor: value('executor'),
        executor_config: pairs('executor_config'),
        retries: value('retries') === '' ? 0 : wholeNumber('retries'),
        retry_backoff: value('retry_backoff'),
        retry_backoff_max: value('retry_backoff_max'),
        concurrency: value('concurrency'),
        on_overload: value('on_overload'),
        parent_job: value('parent_job'),
        ephemeral: checked('ephemeral'),
        tags: pairs('tags'),
        metadata: pairs('metadata'),
      };
      if (value('executions_retained') !== '') job.executions_retained = wholeNumber('executions_retained');
      for (const key of ['starts_at', 'expires_at']) {
        if (value(key) !== '') job[key] = value(key);
      }
      for (const key of ['processors', 'notify']) {
        if (value(key) === '') continue;
        try {
          job[key] = JSON.parse(value(key));
        } catch (err) {
          throw new FieldError(key, 'not a JSON object: ' + err.message);
        }
      }
      const own = section();
      for (const control of own ? $$('[data-ec]', own) : []) {
        const key = control.dataset.ec;
        let text;
        if (control.type === 'checkbox') text = control.checked ? 'true' : '';
        else if (key === 'body') text = control.value;
        else text = control.value.trim();
        if (text !== '') job.executor_config[key] = text;
      }
      return job;
    }

    /** Fill the form from a job (the JSON view's content). */
    function jobToForm(job) {
      const set = (id, v) => { if (input(id)) input(id).value = v === undefined || v === null ? '' : String(v); };
      const plain = ['name', 'displayname', 'owner', 'owner_email', 'schedule', 'timezone', 'catch_up',
        'catch_up_window', 'retries', 'retry_backoff', 'retry_backoff_max', 'concurrency', 'on_overload', 'parent_job',
        'starts_at', 'expires_at', 'executions_retained'];
      for (const key of plain) {
        if (key === 'name' && input('name').readOnly) continue;
        set(key, job[key]);
      }
      input('disabled').checked = !!job.disabled;
      input('ephemeral').checked = !!job.ephemeral;
      set('tags', toPairs(job.tags));
      set('metadata', toPairs(job.metadata));
      const processors = job.processors && Object.keys(job.processors).length ? job.processors : null;
      set('processors', processors ? JSON.stringify(processors, null, 2) : '');
      set('notify', job.notify ? JSON.stringify(job.notify, null, 2) : '');
      const executor = input('executor');
      if (job.executor && !$$('option', executor).some((o) => o.value === job.executor)) {
        executor.add(new Option(job.executor, job.executor));
      }
      if (job.executor) executor.value = job.executor;
      showExecutor();
      const config = Object.assign({}, job.executor_config || {});
      const own = section();
      for (const control of own ? $$('[data-ec]', own) : []) {
        const key = control.dataset.ec;
        const text = config[key] === undefined ? '' : String(config[key]);
        delete config[key];
        if (control.type === 'checkbox') control.checked = /^(1|t|true)$/i.test(text);
        else if (control.tagName === 'SELECT') control.value = text.toUpperCase() || control.options[0].value;
        else control.value = text;
      }
      set('executor_config', toPairs(config));
    }

    function clearErrors() {
      for (const slot of $$('.field-error', form)) {
        slot.hidden = true;
        slot.textContent = '';
      }
      for (const control of $$('[aria-invalid]', form)) control.removeAttribute('aria-invalid');
      const general = $('#form-error');
      general.hidden = true;
      general.textContent = '';
    }

    /** The visible field an error names: exact, else its first part (tags.k -> tags); JSON view: the JSON. */
    function fieldFor(field) {
      const find = (key) => $$(`[data-field="${CSS.escape(key)}"]`, form).find((f) => !f.closest('[hidden]'));
      if (view === 'json') return find('json');
      return find(field) || (field.includes('.') ? find(field.split('.')[0]) : null) || null;
    }

    function showError(err) {
      const message = err.message;
      const named = err.field || (/^([A-Za-z0-9_.]+): /.exec(message) || [])[1];
      const wrapper = named ? fieldFor(named) : null;
      if (!wrapper) {
        const general = $('#form-error');
        general.textContent = message;
        general.hidden = false;
        return;
      }
      const slot = $('.field-error', wrapper);
      slot.textContent = message;
      slot.hidden = false;
      const control = $('input, textarea, select', wrapper);
      if (control) {
        control.setAttribute('aria-invalid', 'true');
        control.focus();
      }
    }

    function show(next) {
      if (next === view) return;
      clearErrors();
      if (next === 'json') {
        try {
          json.value = JSON.stringify(formToJob(), null, 2);
        } catch (err) {
          showError(err);
          return;
        }
      } else {
        let job;
        try {
          job = JSON.parse(json.value);
        } catch (err) {
          showError(new FieldError('json', 'not valid JSON: ' + err.message));
          return;
        }
        jobToForm(job);
      }
      view = next;
      for (const name of ['form', 'json']) {
        panes[name].hidden = name !== view;
        tabs[name].setAttribute('aria-selected', String(name === view));
        tabs[name].tabIndex = name === view ? 0 : -1;
      }
      if (view === 'form') updatePreview();
    }

    tabs.form.addEventListener('click', () => show('form'));
    tabs.json.addEventListener('click', () => show('json'));
    tabs.form.parentElement.addEventListener('keydown', (event) => {
      if (event.key !== 'ArrowLeft' && event.key !== 'ArrowRight') return;
      event.preventDefault();
      const next = view === 'form' ? 'json' : 'form';
      show(next);
      tabs[view].focus();
    });

    input('executor').addEventListener('change', showExecutor);

    // Live preview of the next fire times, from the API's preview endpoint.
    const preview = $('#preview');
    let timer = null;
    let asked = 0;
    async function updatePreview() {
      const schedule = value('schedule');
      const ticket = ++asked;
      if (!schedule) {
        preview.replaceChildren();
        return;
      }
      const query = new URLSearchParams({ schedule, count: '5' });
      if (value('timezone')) query.set('timezone', value('timezone'));
      if (value('name')) query.set('name', value('name'));
      let content;
      try {
        const data = await api('GET', '/v1/schedule/preview?' + query);
        content = document.createElement('div');
        const heading = document.createElement('p');
        heading.className = 'preview-title';
        heading.textContent = data.fires.length
          ? `Next fire times (${data.timezone}):`
          : 'This schedule does not fire by itself.';
        content.append(heading);
        const list = document.createElement('ol');
        for (const fire of data.fires) {
          const item = document.createElement('li');
          const local = document.createElement('time');
          local.dateTime = fire.utc;
          local.title = fire.utc;
          local.textContent = fire.local.replace('T', ' ') + ' ' + fire.zone_abbreviation;
          item.append(local);
          list.append(item);
        }
        content.append(list);
      } catch (err) {
        content = document.createElement('p');
        content.className = 'preview-error';
        content.textContent = err.message;
      }
      if (ticket === asked) preview.replaceChildren(content);
    }
    for (const id of ['schedule', 'timezone']) {
      input(id).addEventListener('input', () => {
        clearTimeout(timer);
        timer = setTimeout(updatePreview, 250);
      });
    }
    updatePreview();

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearErrors();
      let body;
      let name;
      try {
        const job = view === 'json' ? JSON.parse(json.value) : formToJob();
        name = job && job.name;
        body = view === 'json' ? json.value : JSON.stringify(job);
      } catch (err) {
        showError(err instanceof FieldError ? err : new FieldError('json', 'not valid JSON: ' + err.message));
        return;
      }
      const save = $('#save');
      save.disabled = true;
      try {
        const run = $('#runoncreate') && $('#runoncreate').checked ? '?runoncreate=true' : '';
        if (form.dataset.mode === 'create' && typeof name === 'string' && name !== '') {
          const exists = await fetch(jobPath(name), { headers: { Accept: 'application/json' } });
          if (exists.ok && !window.confirm(`A job named ${name} exists already. Replace it?`)) return;
        }
        const job = form.dataset.mode === 'edit'
          ? await api('PUT', jobPath(form.dataset.name) + run, body)
          : await api('POST', '/v1/jobs' + run, body);
        remember(`Saved job ${job.name}.`);
        location.href = '/ui/jobs/' + encodeURIComponent(job.name);
      } catch (err) {
        showError(err);
      } finally {
        save.disabled = false;
      }
    });
  }

  // ---- Start ---------------------------------------------------------------------------------------------

  function start() {
    showRemembered();
    updateBulk();
    for (const element of $$('[data-live]')) startLive(element);
    const pre = $('pre[data-follow]');
    if (pre) followOutput(pre);
    const form = $('#job-form');
    if (form) editor(form);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

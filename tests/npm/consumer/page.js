// A page's script as a bundler sees it: the package imported by its name, resolved through its `exports`.
import { CloseCode, NotifierClient } from 'notifier-push-client';

const client = new NotifierClient({
  url: '/ws',
  getToken: async () => (await fetch('/api/notifier-token', { credentials: 'include' })).text(),
});
client.on('state', (state, detail) => {
  document.title = detail.code === CloseCode.SERVER_RESTART ? 'notifier: restarting' : `notifier: ${state}`;
});
client.connect();
client.subscribe('news.sport', (event) => console.log(event.data));

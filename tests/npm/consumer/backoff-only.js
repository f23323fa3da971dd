// Imports one small function: a bundle of it must leave the client class out (the package has no side effects).
import { backoffDelay } from 'notifier-push-client';

console.log(backoffDelay(3, 500, 20000));

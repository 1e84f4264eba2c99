// node-zookeeper-client against a ZooKeeper-protocol server: create, getData,
// setData, getChildren with a watch. Prints one JSON line of what it saw.
// Usage: node nodeclient.js HOSTS PATH
const zookeeper = require("node-zookeeper-client");
const [hosts, path] = process.argv.slice(2);
const client = zookeeper.createClient(hosts, { sessionTimeout: 10000, retries: 2 });
const out = {};
const fail = (what, err) => { console.log(JSON.stringify({ error: `${what}: ${err}` })); process.exit(1); };
setTimeout(() => fail("timeout", "no result within 20 s"), 20000).unref();

client.once("connected", () => {
  client.create(path, Buffer.from("from-node"), (err, created) => {
    if (err) return fail("create", err);
    out.created = created;
    client.getData(path, (err, data, stat) => {
      if (err) return fail("getData", err);
      out.data = data.toString();
      out.version = stat.version;
      client.getChildren(path, (event) => {
        out.event = { type: event.getName(), path: event.getPath() };
        console.log(JSON.stringify(out));
        client.close();
      }, (err, children) => {
        if (err) return fail("getChildren", err);
        out.children = children;
        client.setData(path, Buffer.from("changed"), 0, (err, stat) => {
          if (err) return fail("setData", err);
          out.version_after = stat.version;
          client.create(`${path}/kid`, (err) => { if (err) fail("create kid", err); });
        });
      });
    });
  });
});
client.connect();

// The compiled addon (node-gyp puts it in build/Release).
module.exports = require('./build/Release/tapwall.node');
